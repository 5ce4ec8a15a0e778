"""The Redis record store: task records in hashes, Celery's result meta where Celery keeps it.

Key layout, for a store with prefix ``p`` (one Redis database can hold several stores)::

    p:rec:<id>                        HASH    the record: name, state, owner, queue, attempt,
                                              submitted_at, started_at, finished_at,
                                              updated_at (epoch seconds), cancel ("1"),
                                              progress (JSON), celery_state
    celery-task-meta-<id>             STRING  Celery's result meta (JSON text), Celery's own
                                              key: its RedisBackend reads it as it is
    p:idx:all                         ZSET    every record        } scored by submitted_at,
    p:idx:state:<state>               ZSET    per state           } newest last
    p:idx:owner:<owner>               ZSET    per owner           }
    p:idx:owner-state:<state>:<owner> ZSET    per owner and state }
    p:expiry                          ZSET    "<len(id)>:<id>[=<owner>]" scored by the time
                                              (ms) the record expires, for ``prune``

Channels: every ``save`` publishes the meta text on ``celery-task-meta-<id>``, as Celery's
RedisBackend does (so ``AsyncResult.get()`` wakes up), and every write that changes a
record publishes a short JSON message on ``p:events:<id>`` (:meth:`RedisStore.events_channel`).

Each write is one Lua script call (EVALSHA), so the rules of
:mod:`flask_tasks.store.base` hold atomically, whatever the number of workers writing. The
scripts touch keys they compute from the prefix, so this store needs a standalone (or
Sentinel-managed) Redis 5 or later, not Redis Cluster.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from kombu.utils.url import maybe_sanitize_url
from redis.exceptions import NoScriptError, RedisError

from flask_tasks.state import Progress, TaskRecord, TaskState, state_from_celery

from .base import (
    DEFAULT_PREFIX,
    DEFAULT_RETENTION,
    CancelOutcome,
    Page,
    RecordStore,
    StartDecision,
    StoreError,
    fields_from_meta,
)

CELERY_TASK_KEYPREFIX = "celery-task-meta-"
"""Where Celery's RedisBackend keeps a task's result meta (``celery-task-meta-<id>``)."""

_UTC = datetime.timezone.utc

# -- the Lua scripts ----------------------------------------------------------------------
#
# Every script gets the store's prefix as ARGV[1]. Write scripts about one record get
# KEYS[1] = its hash and KEYS[2] = its Celery meta key, and the task id as ARGV[2].

_COMMON = """
local p = ARGV[1]
local STATES = {'queued', 'running', 'retrying', 'succeeded', 'failed', 'cancelled'}
local FINAL = {succeeded = true, failed = true, cancelled = true}

local function state_key(state) return p .. ':idx:state:' .. state end
local function owner_key(owner) return p .. ':idx:owner:' .. owner end
local function owner_state_key(state, owner)
  return p .. ':idx:owner-state:' .. state .. ':' .. owner
end

-- the member of p:expiry: the id, and the owner the record is indexed under
local function tag(id, owner)
  local member = #id .. ':' .. id
  if owner then member = member .. '=' .. owner end
  return member
end

local function untag(member)
  local colon = string.find(member, ':', 1, true)
  local n = tonumber(string.sub(member, 1, colon - 1))
  local id = string.sub(member, colon + 1, colon + n)
  local rest = string.sub(member, colon + n + 1)
  if rest == '' then return id, nil end
  return id, string.sub(rest, 2)
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function unfile(id, state, owner)
  redis.call('ZREM', state_key(state), id)
  if owner then redis.call('ZREM', owner_state_key(state, owner), id) end
end

local function file(id, state, owner, score)
  redis.call('ZADD', state_key(state), score, id)
  if owner then redis.call('ZADD', owner_state_key(state, owner), score, id) end
end

-- a record that did not exist: forget what an expired record with its id left behind
local function file_new(id, state, owner, score)
  for _, s in ipairs(STATES) do unfile(id, s, owner) end
  redis.call('ZADD', p .. ':idx:all', score, id)
  if owner then redis.call('ZADD', owner_key(owner), score, id) end
  file(id, state, owner, score)
end

local function refile(id, old, new, owner, score)
  if old ~= new then
    unfile(id, old, owner)
    file(id, new, owner, score)
  end
end

-- remove an id from every index (the owner's too, when it is known)
local function unindex(id, owner)
  redis.call('ZREM', p .. ':idx:all', id)
  for _, s in ipairs(STATES) do unfile(id, s, owner) end
  if owner then redis.call('ZREM', owner_key(owner), id) end
end

-- (re)start the expiry clock of the record and its meta
local function keep(rec, meta, id, owner, ms)
  local at = string.format('%.0f', now_ms() + tonumber(ms))
  redis.call('PEXPIREAT', rec, at)
  redis.call('PEXPIREAT', meta, at)
  redis.call('ZADD', p .. ':expiry', at, tag(id, owner))
end

local function notify(id, state, updated_at, cancel, extra)
  redis.call('PUBLISH', p .. ':events:' .. id,
    '{"state":"' .. state .. '","updated_at":' .. updated_at ..
    ',"cancel_requested":' .. (cancel and 'true' or 'false') .. (extra or '') .. '}')
end

-- drop the index entries of records that expired, at most `batch` of them;
-- returns how many records went and whether more are due
local function prune(batch)
  local now = now_ms()
  local expiry = p .. ':expiry'
  local due = redis.call('ZRANGEBYSCORE', expiry, '-inf', '(' .. string.format('%.0f', now),
    'LIMIT', 0, batch)
  local gone = 0
  for _, member in ipairs(due) do
    local id, owner = untag(member)
    local rec = p .. ':rec:' .. id
    local live = redis.call('HMGET', rec, 'state', 'owner')
    redis.call('ZREM', expiry, member)
    if live[1] then
      local live_owner = live[2] or nil
      if live_owner == owner then
        -- still there: file it under the time it really expires
        local ttl = redis.call('PTTL', rec)
        if ttl > 0 then redis.call('ZADD', expiry, string.format('%.0f', now + ttl), member) end
      elseif owner then
        -- created again under another owner: only the old owner's entries are stale
        redis.call('ZREM', owner_key(owner), id)
        for _, s in ipairs(STATES) do redis.call('ZREM', owner_state_key(s, owner), id) end
      end
    else
      unindex(id, owner)
      gone = gone + 1
    end
  end
  return gone, #due >= batch
end
"""

# The sender's write, on the path of every delay(): kept to the few commands it needs.
# ARGV: 2 id, 3 expires at (ms, epoch), 4 score (submitted_at), 5 state, 6 owner,
# 7 has owner, 8... field/value pairs of the hash. Entries an expired record with the same
# id may have left in other indexes are harmless: reads skip an entry whose record is not
# in the index's state (or owner) and drop it, and prune drops the rest.
_CREATE = """
local rec, p, id = KEYS[1], ARGV[1], ARGV[2]
if redis.call('EXISTS', rec) == 1 then return 0 end
local at, score, state = ARGV[3], ARGV[4], ARGV[5]
redis.call('HSET', rec, unpack(ARGV, 8))
redis.call('PEXPIREAT', rec, at)
redis.call('ZADD', p .. ':idx:all', score, id)
redis.call('ZADD', p .. ':idx:state:' .. state, score, id)
local member = #id .. ':' .. id
if ARGV[7] == '1' then
  local owner = ARGV[6]
  redis.call('ZADD', p .. ':idx:owner:' .. owner, score, id)
  redis.call('ZADD', p .. ':idx:owner-state:' .. state .. ':' .. owner, score, id)
  member = member .. '=' .. owner
end
redis.call('ZADD', p .. ':expiry', at, member)
return 1
"""

# ARGV: 2 id, 3 retention ms, 4 now, 5 attempt, 6 started_at, 7 name, 8 queue, 9 has queue,
# 10 owner, 11 has owner
_MARK_RUNNING = """
local rec, meta, id = KEYS[1], KEYS[2], ARGV[2]
local cur = redis.call('HMGET', rec, 'state', 'owner', 'submitted_at', 'cancel')
local state, now = cur[1], ARGV[4]
if state and FINAL[state] then return 0 end
local owner = nil
if state then
  owner = cur[2] or nil
  redis.call('HSET', rec, 'state', 'running', 'attempt', ARGV[5], 'updated_at', now)
  redis.call('HSETNX', rec, 'started_at', ARGV[6])
  refile(id, state, 'running', owner, cur[3])
else
  if ARGV[11] == '1' then owner = ARGV[10] end
  redis.call('HSET', rec, 'name', ARGV[7], 'state', 'running', 'attempt', ARGV[5],
    'submitted_at', now, 'updated_at', now, 'started_at', ARGV[6])
  if owner then redis.call('HSET', rec, 'owner', owner) end
  file_new(id, 'running', owner, now)
end
if ARGV[9] == '1' then redis.call('HSET', rec, 'queue', ARGV[8]) end
keep(rec, meta, id, owner, ARGV[3])
notify(id, 'running', now, cur[4] == '1')
return 1
"""

# ARGV: 2 id, 3 retention ms, 4 now, 5 new state, 6 celery state, 7 meta text, 8 name,
# 9 attempt ('' = unchanged), 10 progress mode ('set', 'clear' or ''), 11 progress JSON
_SAVE = """
local rec, meta, id = KEYS[1], KEYS[2], ARGV[2]
local cur = redis.call('HMGET', rec, 'state', 'owner', 'submitted_at', 'cancel')
local state, new, now = cur[1], ARGV[5], ARGV[4]
if state and FINAL[state] then return 0 end
local owner = cur[2] or nil
if state then
  refile(id, state, new, owner, cur[3])
else
  redis.call('HSET', rec, 'name', ARGV[8], 'submitted_at', now)
  file_new(id, new, nil, now)
end
redis.call('HSET', rec, 'state', new, 'celery_state', ARGV[6], 'updated_at', now)
if ARGV[9] ~= '' then redis.call('HSET', rec, 'attempt', ARGV[9]) end
if ARGV[10] == 'set' then
  redis.call('HSET', rec, 'progress', ARGV[11])
elseif ARGV[10] == 'clear' then
  redis.call('HDEL', rec, 'progress')
end
if FINAL[new] then
  redis.call('HSET', rec, 'finished_at', now)
elseif new == 'running' then
  redis.call('HSETNX', rec, 'started_at', now)
end
redis.call('SET', meta, ARGV[7])
keep(rec, meta, id, owner, ARGV[3])
redis.call('PUBLISH', meta, ARGV[7])
notify(id, new, now, cur[4] == '1')
return 1
"""

# KEYS: the hash only. ARGV: 2 id, 3 now, 4 progress JSON. Returns the cancel flag.
_WRITE_PROGRESS = """
local rec, p, id, now, progress = KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HMGET', rec, 'state', 'cancel')
local state = cur[1]
if not state then return 0 end
local flag = cur[2] == '1'
if state ~= 'succeeded' and state ~= 'failed' and state ~= 'cancelled' then
  redis.call('HSET', rec, 'progress', progress, 'updated_at', now)
  redis.call('PUBLISH', p .. ':events:' .. id,
    '{"state":"' .. state .. '","updated_at":' .. now .. ',"cancel_requested":' ..
    (flag and 'true' or 'false') .. ',"progress":' .. progress .. '}')
end
if flag then return 1 end
return 0
"""

# KEYS: none (the hashes are named from the prefix). ARGV: 2 now, 3... the task ids.
_TOUCH_RUNNING = """
local p, now = ARGV[1], ARGV[2]
for i = 3, #ARGV do
  local rec = p .. ':rec:' .. ARGV[i]
  if redis.call('HGET', rec, 'state') == 'running' then
    redis.call('HSET', rec, 'updated_at', now)
  end
end
return 0
"""

# ARGV: 2 id, 3 retention ms, 4 now, 5 the REVOKED meta of a task cancelled while queued
_REQUEST_CANCEL = """
local rec, meta, id = KEYS[1], KEYS[2], ARGV[2]
local cur = redis.call('HMGET', rec, 'state', 'owner', 'submitted_at')
local state, now = cur[1], ARGV[4]
if not state then return 'not_found' end
if FINAL[state] then return 'finished' end
if state == 'queued' then
  local owner = cur[2] or nil
  redis.call('HSET', rec, 'state', 'cancelled', 'cancel', '1', 'celery_state', 'REVOKED',
    'finished_at', now, 'updated_at', now)
  refile(id, state, 'cancelled', owner, cur[3])
  redis.call('SET', meta, ARGV[5])
  keep(rec, meta, id, owner, ARGV[3])
  redis.call('PUBLISH', meta, ARGV[5])
  notify(id, 'cancelled', now, true)
  return 'cancelled'
end
redis.call('HSET', rec, 'cancel', '1', 'updated_at', now)
notify(id, state, now, true)
return 'requested'
"""

# ARGV: 2 id
_DELETE = """
local rec, meta, id = KEYS[1], KEYS[2], ARGV[2]
local cur = redis.call('HMGET', rec, 'state', 'owner')
local owner = cur[2] or nil
unindex(id, owner)
redis.call('ZREM', p .. ':expiry', tag(id, owner))
redis.call('DEL', rec, meta)
if cur[1] then
  redis.call('PUBLISH', p .. ':events:' .. id, '{"state":null,"deleted":true}')
  return 1
end
return 0
"""

# The record as one JSON object (one C-speed json.loads in Python, no per-field decoding).
_GET = """
local flat = redis.call('HGETALL', KEYS[1])
if #flat == 0 then return {false, false} end
local fields = {}
for i = 1, #flat, 2 do fields[flat[i]] = flat[i + 1] end
return {cjson.encode(fields), redis.call('GET', KEYS[2])}
"""

_GET_META = """
return {redis.call('HGET', KEYS[1], 'celery_state'), redis.call('GET', KEYS[2])}
"""

# KEYS[1]: the index to read. ARGV: 2 limit, 3 budget (most entries examined), 4 cursor
# score ('' = first page), 5 cursor id, 6 name, 7 has name, 8 owner, 9 has owner,
# 10 Celery's meta key prefix.
# Returns {next score, next id, {{id, hash fields, meta}, ...}}.
_LIST = """
local index = KEYS[1]
local limit, budget = tonumber(ARGV[2]), tonumber(ARGV[3])
local name, owner, want_state = nil, nil, nil
if ARGV[7] == '1' then name = ARGV[6] end
if ARGV[9] == '1' then owner = ARGV[8] end
if ARGV[11] ~= '' then want_state = ARGV[11] end

-- byte order, as Redis sorts members (Lua's own comparison follows the locale)
local function before(a, b)
  local n = math.min(#a, #b)
  for i = 1, n do
    local x, y = string.byte(a, i), string.byte(b, i)
    if x ~= y then return x < y end
  end
  return #a < #b
end

-- where the page starts: after (score, id) in newest-first order, whether or not that
-- entry is still in the index
local start = 0
if ARGV[4] ~= '' then
  local score, after = ARGV[4], ARGV[5]
  start = redis.call('ZCOUNT', index, '(' .. score, '+inf')
  for _, member in ipairs(redis.call('ZRANGEBYSCORE', index, score, score)) do
    if not before(member, after) then start = start + 1 end
  end
end

local out, dead = {}, {}
local last_score, last_id = false, false
local seen, more = 0, false
local chunk = limit + 1
if name then chunk = math.min(budget, 200) end
local pos = start
while true do
  local batch = redis.call('ZREVRANGE', index, pos, pos + chunk - 1, 'WITHSCORES')
  for i = 1, #batch, 2 do
    local id = batch[i]
    if #out >= limit or seen >= budget then
      more = true
      break
    end
    seen = seen + 1
    local rec = p .. ':rec:' .. id
    local got = redis.call('HMGET', rec, 'name', 'state', 'owner')
    if not got[2] then
      table.insert(dead, id)
    elseif (want_state and got[2] ~= want_state) or (owner and got[3] ~= owner) then
      -- left behind by an expired record whose id was used again: not this index's
      redis.call('ZREM', index, id)
    elseif (not name) or got[1] == name then
      table.insert(out, {id, redis.call('HGETALL', rec), redis.call('GET', ARGV[10] .. id)})
    end
    last_score, last_id = batch[i + 1], id
  end
  if more or #batch < 2 * chunk then break end
  pos = pos + chunk
end

-- entries whose record expired: never shown, dropped now (prune drops the rest)
for _, id in ipairs(dead) do
  redis.call('ZREM', index, id)
  unindex(id, owner)
end

if not more then last_score, last_id = false, false end
return {last_score, last_id, out}
"""

# ARGV: 2 owner, 3 has owner, 4 prune batch. Returns the six counts, or {-1} when more
# expired records must be pruned first.
_COUNTS = """
local _, pending = prune(tonumber(ARGV[4]))
if pending then return {-1} end
local counts = {}
for i, s in ipairs(STATES) do
  if ARGV[3] == '1' then
    counts[i] = redis.call('ZCARD', owner_state_key(s, ARGV[2]))
  else
    counts[i] = redis.call('ZCARD', state_key(s))
  end
end
return counts
"""

# ARGV: 2 batch. Returns {records gone, more due}.
_PRUNE = """
local gone, more = prune(tonumber(ARGV[2]))
return {gone, more and 1 or 0}
"""

# KEYS[1]: the index of one final state. ARGV: 2 start rank, 3 batch, 4 finished before
# ('' = any time), 5 Celery's meta key prefix. Returns {deleted, entries removed, examined}.
_PURGE = """
local index, start, batch = KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local ids = redis.call('ZRANGE', index, start, start + batch - 1)
local deleted, removed = 0, 0
for _, id in ipairs(ids) do
  local rec = p .. ':rec:' .. id
  local cur = redis.call('HMGET', rec, 'state', 'owner', 'finished_at')
  if not cur[1] then
    redis.call('ZREM', index, id)
    unindex(id, nil)
    removed = removed + 1
  elseif FINAL[cur[1]] and (ARGV[4] == '' or tonumber(cur[3] or '0') < tonumber(ARGV[4])) then
    local owner = cur[2] or nil
    redis.call('ZREM', index, id)
    unindex(id, owner)
    redis.call('ZREM', p .. ':expiry', tag(id, owner))
    redis.call('DEL', rec, ARGV[5] .. id)
    redis.call('PUBLISH', p .. ':events:' .. id, '{"state":null,"deleted":true}')
    deleted = deleted + 1
    removed = removed + 1
  end
end
return {deleted, removed, #ids}
"""


class _Script:
    """A Lua script, its SHA1 as EVALSHA names it, and whether the server has it cached."""

    __slots__ = ("loaded", "sha", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()
        # The first call sends the text (EVAL, which caches it), later ones its SHA1
        # (EVALSHA). Threads racing on the flag only send the text once more.
        self.loaded = False

    def send(self, connection: Any, keys: Sequence[str], args: Sequence[str | int]) -> None:
        if self.loaded:
            connection.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
        else:
            connection.send_command("EVAL", self.text, len(keys), *keys, *args)

    def read(self, connection: Any, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Read the reply of :meth:`send`. When the server has lost the script (a restart,
        SCRIPT FLUSH), send it again with EVAL, which also caches it again."""
        try:
            reply = connection.read_response()
        except NoScriptError:
            connection.send_command("EVAL", self.text, len(keys), *keys, *args)
            reply = connection.read_response()
        self.loaded = True
        return reply


@dataclass(frozen=True)
class _Scripts:
    create: _Script
    mark_running: _Script
    save: _Script
    write_progress: _Script
    touch_running: _Script
    request_cancel: _Script
    delete: _Script
    get: _Script
    get_meta: _Script
    list: _Script
    counts: _Script
    prune: _Script
    purge: _Script


class RedisStore(RecordStore):
    """Task records in Redis; Celery's result meta at Celery's own key, beside them.

    ``url`` is a redis-py URL (``redis://``, ``rediss://``, ``unix://``); its query
    parameters (``socket_timeout=``, ``socket_connect_timeout=``, ``max_connections=``,
    ...) reach redis-py as they do with ``redis.Redis.from_url``. Without them, connecting
    gives up after :attr:`connect_timeout` seconds and a reply after
    :attr:`socket_timeout` seconds, so a Redis that hangs raises :class:`StoreError`
    rather than hanging a web request.

    One instance serves every thread of a process through redis-py's connection pool
    (and a few connections kept ready between calls, :attr:`idle_connections`); a forked
    child opens connections of its own instead of sharing its parent's.
    ``task_keyprefix`` is Celery's key prefix for result meta (change it only along with
    Celery's ``global_keyprefix`` transport option).
    """

    max_connections: int = 200
    """Connections per process; more callers wait for one (a query parameter overrides it)."""
    socket_timeout: float = 5.0
    """Default seconds to wait for a reply (the URL's ``socket_timeout`` wins)."""
    connect_timeout: float = 3.0
    """Default seconds to wait for a connection (the URL's ``socket_connect_timeout`` wins)."""
    scan_budget: int = 1000
    """Most index entries a ``list`` call skips (name filter, expired entries) per page."""
    prune_batch: int = 500
    """Expired records handled per script call by ``prune`` and ``counts``."""
    idle_connections: int = 8
    """Most connections kept between calls outside the pool, ready without a check."""

    def __init__(
        self,
        url: str,
        *,
        retention: datetime.timedelta = DEFAULT_RETENTION,
        prefix: str = DEFAULT_PREFIX,
        task_keyprefix: str = CELERY_TASK_KEYPREFIX,
        socket_timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        if socket_timeout is not None:
            self.socket_timeout = socket_timeout
        if connect_timeout is not None:
            self.connect_timeout = connect_timeout
        if retention.total_seconds() * 1000 < 1:
            raise ValueError(f"retention must be positive, not {retention!r}")
        if not prefix:
            raise ValueError("prefix must not be empty")
        self.retention = retention
        self.prefix = prefix
        self.task_keyprefix = task_keyprefix
        self.url = maybe_sanitize_url(url)
        self._retention_ms = str(int(retention.total_seconds() * 1000))
        try:
            # A blocking pool: past max_connections (the URL's, or 200) a caller waits up
            # to socket_timeout for a free connection instead of failing at once, which
            # matters under gevent, where hundreds of requests can use the store together.
            pool = redis.BlockingConnectionPool.from_url(
                url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.connect_timeout,
                timeout=self.socket_timeout,
                max_connections=self.max_connections,
            )
            client = redis.Redis(connection_pool=pool)
        except ValueError as exc:  # a malformed URL or query parameter
            raise ValueError(f"invalid Redis URL {self.url!r}: {exc}") from None
        self.client: redis.Redis = client
        """The redis-py client (and its connection pool), to share with a result backend."""
        self._idle: list[Any] = []
        self._pid = os.getpid()
        self._scripts = _Scripts(
            create=_Script(_CREATE),  # self-contained: the sender's hot path
            mark_running=_Script(_COMMON + _MARK_RUNNING),
            save=_Script(_COMMON + _SAVE),
            write_progress=_Script(_WRITE_PROGRESS),  # self-contained: the task's hot path
            touch_running=_Script(_TOUCH_RUNNING),
            request_cancel=_Script(_COMMON + _REQUEST_CANCEL),
            delete=_Script(_COMMON + _DELETE),
            get=_Script(_GET),
            get_meta=_Script(_GET_META),
            list=_Script(_COMMON + _LIST),
            counts=_Script(_COMMON + _COUNTS),
            prune=_Script(_COMMON + _PRUNE),
            purge=_Script(_COMMON + _PURGE),
        )

    def __repr__(self) -> str:
        return f"<RedisStore {self.url} prefix={self.prefix!r}>"

    # -- names ----------------------------------------------------------------------------

    def record_key(self, task_id: str) -> str:
        """The hash holding a record's fields."""
        return f"{self.prefix}:rec:{task_id}"

    def meta_key(self, task_id: str) -> str:
        """Celery's key for a task's result meta (``celery-task-meta-<id>``), also the
        channel its changes are published on."""
        return f"{self.task_keyprefix}{task_id}"

    def events_channel(self, task_id: str) -> str:
        """The channel that announces each change of a record.

        Each message is a small JSON object: ``{"state": ..., "updated_at": <epoch
        seconds>, "cancel_requested": ...}`` (plus ``"progress"`` for a progress write),
        or ``{"state": null, "deleted": true}`` when the record was deleted.
        """
        return f"{self.prefix}:events:{task_id}"

    def _index_key(self, owner: str | None, state: TaskState | None) -> str:
        if owner is not None and state is not None:
            return f"{self.prefix}:idx:owner-state:{state.value}:{owner}"
        if owner is not None:
            return f"{self.prefix}:idx:owner:{owner}"
        if state is not None:
            return f"{self.prefix}:idx:state:{state.value}"
        return f"{self.prefix}:idx:all"

    # -- plumbing -------------------------------------------------------------------------

    def _error(self, exc: RedisError) -> StoreError:
        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
            return StoreError(f"Cannot reach the Redis record store at {self.url}: {exc}")
        return StoreError(f"The Redis record store at {self.url} failed: {exc}")

    def _acquire(self) -> tuple[Any, bool]:
        """A connection, and whether it was idle in this store's lane (then it may have been
        closed by the server meanwhile).

        The lane keeps a few connections out of the pool between calls, sparing each call
        the pool's check of the socket (several system calls, a fifth of a write's cost).
        Any: redis-py leaves Connection's methods untyped.
        """
        pid = os.getpid()
        if self._pid != pid:  # a forked child: the parent's sockets are not ours
            self._idle, self._pid = [], pid
        try:
            return self._idle.pop(), True
        except IndexError:
            pass
        try:
            return self.client.connection_pool.get_connection(), False
        except RedisError as exc:
            raise self._error(exc) from exc

    def _release(self, connection: Any) -> None:
        # (Older redis-py versions lack should_reconnect; a closed connection in the lane
        # is harmless: the next send opens it.)
        should_reconnect = getattr(connection, "should_reconnect", None)
        if (
            len(self._idle) < self.idle_connections
            and connection.pid == self._pid == os.getpid()
            and not (should_reconnect is not None and should_reconnect())
        ):
            self._idle.append(connection)
        else:
            self.client.connection_pool.release(connection)

    def _run(self, script: _Script, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        """Run a script: one EVALSHA (EVAL on first use and after NOSCRIPT).

        A connection that was idle and turns out closed by the server (a restart, its
        ``timeout``) is opened again and the call sent once more; a timeout is not retried.
        """
        connection, reused = self._acquire()
        try:
            try:
                script.send(connection, keys, args)
                return script.read(connection, keys, args)
            except redis.ConnectionError:
                if not reused:
                    raise
                connection.disconnect()
                script.send(connection, keys, args)
                return script.read(connection, keys, args)
        except RedisError as exc:
            raise self._error(exc) from exc
        finally:
            self._release(connection)

    def _keys(self, task_id: str) -> list[str]:
        return [self.record_key(task_id), self.meta_key(task_id)]

    # -- the sender -----------------------------------------------------------------------

    def _create_call(self, record: TaskRecord) -> tuple[list[str], list[str]]:
        submitted = _epoch(record.submitted_at)
        updated = _epoch(record.updated_at)
        fields = [
            "name", record.name,
            "state", record.state.value,
            "attempt", str(record.attempt),
            "submitted_at", submitted,
            "updated_at", updated,
        ]  # fmt: skip
        optional: dict[str, str | None] = {
            "owner": record.owner,
            "queue": record.queue,
            "started_at": _epoch(record.started_at) if record.started_at else None,
            "finished_at": _epoch(record.finished_at) if record.finished_at else None,
            "progress": _progress_json(record.progress) if record.progress else None,
            "celery_state": record.celery_state,
            "cancel": "1" if record.cancel_requested else None,
        }
        for field, value in optional.items():
            if value is not None:
                fields += [field, value]
        expires_at = int(time.time() * 1000) + int(self._retention_ms)
        args = [
            self.prefix,
            record.id,
            str(expires_at),
            submitted,
            record.state.value,
            record.owner or "",
            "1" if record.owner is not None else "0",
            *fields,
        ]
        return [self.record_key(record.id)], args

    def create(self, record: TaskRecord) -> None:
        """Write ``record`` unless its id has one; index it and start its expiry clock."""
        keys, args = self._create_call(record)
        self._run(self._scripts.create, keys, args)

    def create_pipelined(self, record: TaskRecord) -> Callable[..., None]:
        """Send :meth:`create` now; the returned function reads its reply.

        The script goes out on a connection of the pool without waiting, so the caller
        can publish the task message while Redis works, and the two round trips overlap.
        Raises :class:`StoreError` at once when the command cannot be sent; the returned
        function raises it when the write failed. Callers must always call the returned
        function (in a ``finally`` if need be): it is what gives the connection back to
        the pool. One never called keeps its connection until :meth:`close`. Given a
        ``timeout``, it waits no longer than that for the reply: without one, it drops
        the connection and raises StoreError (the write may or may not have happened).
        """
        keys, args = self._create_call(record)
        script = self._scripts.create
        connection, reused = self._acquire()
        try:
            try:
                script.send(connection, keys, args)
            except redis.ConnectionError:
                if not reused:
                    raise
                reused = False
                connection.disconnect()
                script.send(connection, keys, args)
        except BaseException as exc:
            self._release(connection)  # disconnected by the failed send
            if isinstance(exc, RedisError):
                raise self._error(exc) from exc
            raise
        pending = [connection]

        def finish(timeout: float | None = None) -> None:
            if not pending:
                return
            pending.clear()
            try:
                if timeout is not None and not connection.can_read(timeout=timeout):
                    connection.disconnect()
                    raise StoreError(
                        f"The Redis record store at {self.url} did not answer within {timeout}s"
                    )
                try:
                    script.read(connection, keys, args)
                except redis.ConnectionError:
                    if not reused:
                        raise
                    connection.disconnect()  # it was closed before the send: send again
                    script.send(connection, keys, args)
                    script.read(connection, keys, args)
            except RedisError as exc:
                connection.disconnect()
                raise self._error(exc) from exc
            finally:
                self._release(connection)

        return finish

    def delete(self, task_id: str) -> None:
        """Remove a record, its meta and its index entries."""
        self._run(self._scripts.delete, self._keys(task_id), [self.prefix, task_id])

    # -- the worker -----------------------------------------------------------------------

    def mark_running(
        self,
        task_id: str,
        *,
        name: str,
        attempt: int,
        started_at: datetime.datetime,
        queue: str | None = None,
        owner: str | None = None,
    ) -> StartDecision:
        """Move a record to ``running`` (creating it when missing), unless it is final.

        ``queue`` replaces the record's when given; ``owner`` is used only for a record
        created here. Celery's state and meta are left as they are.
        """
        args = [
            self.prefix,
            task_id,
            self._retention_ms,
            _epoch_now(),
            str(attempt),
            _epoch(started_at),
            name,
            queue or "",
            "1" if queue is not None else "0",
            owner or "",
            "1" if owner is not None else "0",
        ]
        ran = self._run(self._scripts.mark_running, self._keys(task_id), args)
        return StartDecision.RUN if ran else StartDecision.SKIP

    def save(
        self,
        task_id: str,
        *,
        celery_state: str,
        meta: str,
        name: str | None = None,
        attempt: int | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """Store Celery's meta (and publish it on Celery's channel); update the record.

        A custom state whose meta carries progress (``{"current": i, "total": n}``)
        clears the record's own progress, so whichever was written last is what reads
        show, and nothing is kept twice.
        """
        state = state_from_celery(celery_state)
        mode, progress_json = "", ""
        if progress is not None:
            mode, progress_json = "set", _progress_json(progress)
        elif (
            state is TaskState.RUNNING
            and celery_state != "STARTED"
            and "progress" in fields_from_meta(celery_state, meta)
        ):
            mode = "clear"
        args = [
            self.prefix,
            task_id,
            self._retention_ms,
            _epoch_now(),
            state.value,
            celery_state,
            meta,
            name or "",
            "" if attempt is None else str(attempt),
            mode,
            progress_json,
        ]
        return bool(self._run(self._scripts.save, self._keys(task_id), args))

    def write_progress(self, task_id: str, progress: Progress) -> bool:
        """Store a running task's progress; return its cancel flag (one script call)."""
        args = [self.prefix, task_id, _epoch_now(), _progress_json(progress)]
        return bool(self._run(self._scripts.write_progress, [self.record_key(task_id)], args))

    def touch_running(self, task_ids: Collection[str]) -> None:
        """Refresh ``updated_at`` of the running ones among ``task_ids`` (one script call)."""
        if task_ids:
            self._run(self._scripts.touch_running, [], [self.prefix, _epoch_now(), *task_ids])

    # -- anyone ---------------------------------------------------------------------------

    def request_cancel(self, task_id: str) -> CancelOutcome:
        """Cancel a queued task at once, or flag a running one.

        A queued task also gets Celery's ``REVOKED`` meta (a ``TaskRevokedError``), so a
        caller blocked in ``AsyncResult.get()`` wakes up instead of waiting forever.
        """
        revoked = json.dumps(
            {
                "status": "REVOKED",
                "result": {
                    "exc_type": "TaskRevokedError",
                    "exc_message": ["cancelled before it started"],
                    "exc_module": "celery.exceptions",
                },
                "traceback": None,
                "children": [],
                "date_done": datetime.datetime.now(_UTC).isoformat(),
                "task_id": task_id,
            }
        )
        args = [self.prefix, task_id, self._retention_ms, _epoch_now(), revoked]
        outcome = self._run(self._scripts.request_cancel, self._keys(task_id), args)
        return CancelOutcome(_text(outcome))

    def cancel_requested(self, task_id: str) -> bool:
        """The cancel flag of a record (False when there is none)."""
        try:
            flag = self.client.hget(self.record_key(task_id), "cancel")
        except RedisError as exc:
            raise self._error(exc) from exc
        return flag is not None and _text(flag) == "1"

    def get(self, task_id: str) -> TaskRecord | None:
        """The whole record, read with its meta in one script call."""
        fields, meta = self._run(self._scripts.get, self._keys(task_id), [])
        if not fields:
            return None
        return _record_from_fields(task_id, json.loads(fields), meta)

    def get_meta(self, task_id: str) -> tuple[str, str] | None:
        """Celery's ``(state, meta)`` of a task, or None when it has no meta.

        Meta that Celery wrote without a record (another backend on the same keys) reports
        the state its ``status`` names.
        """
        state, meta = self._run(self._scripts.get_meta, self._keys(task_id), [])
        if meta is None:
            return None
        text = _text(meta)
        if state is None:
            try:
                status = json.loads(text).get("status")
            except (ValueError, AttributeError):
                status = None
            return (status if isinstance(status, str) else "PENDING"), text
        return _text(state), text

    def list(
        self,
        *,
        owner: str | None = None,
        state: TaskState | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Records newest first, one page per script call.

        Reads the sorted set of the filter (all records, an owner's, a state's, or an
        owner's in one state), so a page costs O(log n + limit) whatever the number of
        records. A ``name`` filter reads the names of the entries in turn: a page then
        costs O(log n + limit + skipped), where at most :attr:`scan_budget` entries are
        examined beyond ``limit``; when that budget runs out the page comes back short
        (even empty) with a ``next_cursor`` that continues the scan. Entries of expired
        records are skipped and dropped on the way.

        The cursor encodes the (submitted_at, id) of the last entry read, so pages neither
        repeat nor skip records when new ones arrive or several share a timestamp.
        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit!r}")
        score, after = _decode_cursor(cursor) if cursor else ("", "")
        args = [
            self.prefix,
            str(limit),
            str(limit + self.scan_budget),
            score,
            after,
            name or "",
            "1" if name is not None else "0",
            owner or "",
            "1" if owner is not None else "0",
            self.task_keyprefix,
            state.value if state is not None else "",
        ]
        next_score, next_id, rows = self._run(
            self._scripts.list, [self._index_key(owner, state)], args
        )
        records = []
        for row_id, fields, meta in rows:
            got = _record(_text(row_id), fields, meta)
            if got is not None:
                records.append(got)
        next_cursor = None
        if next_score is not None:
            next_cursor = _encode_cursor(_text(next_score), _text(next_id))
        return Page(records=records, next_cursor=next_cursor)

    def counts(self, *, owner: str | None = None) -> dict[TaskState, int]:
        """How many live records there are in each state (all, or one owner's).

        Exact: expired records still in the indexes are pruned first (in batches), then
        each state's sorted set is counted, O(log n) each.
        """
        args = [self.prefix, owner or "", "1" if owner is not None else "0"]
        while True:
            counts = self._run(self._scripts.counts, [], [*args, str(self.prune_batch)])
            if counts != [-1]:
                return {state: int(n) for state, n in zip(TaskState, counts, strict=True)}

    def purge(self, *, finished_before: datetime.datetime | None = None) -> int:
        """Delete finished records (finished before the given time); return how many.

        Reads the three final states' indexes in batches: O(finished records).
        """
        cutoff = _epoch(finished_before) if finished_before is not None else ""
        deleted = 0
        for state in (TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED):
            index = self._index_key(None, state)
            start = 0
            while True:
                args = [self.prefix, str(start), "500", cutoff, self.task_keyprefix]
                gone, removed, examined = self._run(self._scripts.purge, [index], args)
                deleted += int(gone)
                if int(examined) < 500:
                    break
                start += int(examined) - int(removed)
        return deleted

    def prune(self) -> int:
        """Drop the index entries of expired records, in batches; return how many went.

        Redis deletes the records themselves when they expire.
        """
        gone = 0
        while True:
            batch_gone, more = self._run(self._scripts.prune, [], [self.prefix, self.prune_batch])
            gone += int(batch_gone)
            if not int(more):
                return gone

    def drop(self) -> None:
        """Delete every key of this store's prefix and the Celery meta of its records.

        Walks the keyspace with SCAN (never KEYS): O(keys in the database).
        """
        prefix = self.prefix.encode()
        records = prefix + b":rec:"
        index = self._index_key(None, None)
        meta_prefix = self.task_keyprefix.encode()
        try:
            ids = {member for member, _ in self.client.zscan_iter(index, count=1000)}
            keys = []
            for key in self.client.scan_iter(match=_glob_escape(prefix) + b":*", count=1000):
                keys.append(key)
                if key.startswith(records):
                    ids.add(key[len(records) :])
            keys += [meta_prefix + task_id for task_id in ids]
            for start in range(0, len(keys), 500):
                self.client.delete(*keys[start : start + 500])
        except RedisError as exc:
            raise self._error(exc) from exc

    def close(self) -> None:
        """Close the connections (new calls open new ones)."""
        idle, self._idle = self._idle, []
        if self._pid == os.getpid():
            for connection in idle:
                self.client.connection_pool.release(connection)
        self.client.close()


# -- encoding -----------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _epoch(value: datetime.datetime) -> str:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_UTC)
    return repr(value.timestamp())


def _epoch_now() -> str:
    return repr(time.time())


def _time(value: str | None) -> datetime.datetime | None:
    if not value:
        return None
    return datetime.datetime.fromtimestamp(float(value), _UTC)


def _progress_json(progress: Progress) -> str:
    return _PROGRESS_ENCODER.encode(progress.to_dict())


_PROGRESS_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _record(
    task_id: str, flat: Sequence[bytes | str], meta: bytes | str | None
) -> TaskRecord | None:
    """A record from its hash (HGETALL's flat list) and Celery's meta."""
    if not flat:
        return None
    fields = {_text(flat[i]): _text(flat[i + 1]) for i in range(0, len(flat), 2)}
    return _record_from_fields(task_id, fields, meta)


def _record_from_fields(
    task_id: str, fields: dict[str, str], meta: bytes | str | None
) -> TaskRecord:
    """A record from its hash fields and Celery's meta."""
    state = TaskState(fields.get("state", TaskState.QUEUED.value))
    celery_state = fields.get("celery_state")
    derived: dict[str, Any] = {}
    # Celery's meta speaks for the record only while the two agree: after a retry, the
    # running attempt does not show the previous attempt's error.
    if celery_state and meta is not None and state_from_celery(celery_state) is state:
        derived = fields_from_meta(celery_state, _text(meta))
    progress = None
    if fields.get("progress"):
        try:
            progress = Progress.from_dict(json.loads(fields["progress"]))
        except (ValueError, TypeError, AttributeError):
            progress = None
    if progress is None:
        progress = derived.get("progress")
    submitted_at = _time(fields.get("submitted_at")) or datetime.datetime.fromtimestamp(0, _UTC)
    return TaskRecord(
        id=task_id,
        name=fields.get("name", ""),
        state=state,
        submitted_at=submitted_at,
        updated_at=_time(fields.get("updated_at")) or submitted_at,
        owner=fields.get("owner"),
        queue=fields.get("queue"),
        attempt=int(fields.get("attempt") or 0),
        progress=progress,
        result=derived.get("result"),
        error=derived.get("error"),
        started_at=_time(fields.get("started_at")),
        finished_at=_time(fields.get("finished_at")),
        cancel_requested=fields.get("cancel") == "1",
        celery_state=celery_state,
        meta=derived.get("meta"),
    )


def _encode_cursor(score: str, task_id: str) -> str:
    raw = json.dumps([score, task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[str, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        score, task_id = json.loads(raw)
        if not (isinstance(score, str) and isinstance(task_id, str)):
            raise TypeError
        if not math.isfinite(float(score)):
            raise ValueError
    except (ValueError, TypeError, binascii.Error):
        raise ValueError(f"invalid cursor: {cursor!r}") from None
    return score, task_id


def _glob_escape(value: bytes) -> bytes:
    """``value`` matched literally by a Redis glob pattern."""
    out = bytearray()
    for byte in value:
        if byte in b"*?[]\\":
            out += b"\\"
        out.append(byte)
    return bytes(out)
