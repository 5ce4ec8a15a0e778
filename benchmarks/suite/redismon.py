"""Count the store writes a task causes, from Redis' own command log (``MONITOR``).

The same rule for every integration, with no change to any of them: a command counts when
it runs on the suite's database and names the task's id (its keys all do: flask-tasks'
record, Celery's ``celery-task-meta-<id>``, RQ's ``rq:job:<id>``). A write is one round
trip that changes data: a write command, a ``MULTI``/``EXEC`` block holding one, or a Lua
script (``EVALSHA``) whose commands include one. ``PUBLISH`` stores nothing and is not a
write. MONITOR slows Redis down, so it only runs during separate counting runs, never
while something is timed.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis

_WRITES = """SET SETEX PSETEX SETNX MSET GETSET GETDEL APPEND INCR INCRBY INCRBYFLOAT DECR DECRBY
    DEL UNLINK EXPIRE PEXPIRE EXPIREAT PEXPIREAT PERSIST RENAME COPY HSET HMSET HSETNX HDEL
    HINCRBY HINCRBYFLOAT LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LREM LTRIM LSET LINSERT
    RPOPLPUSH LMOVE BLMOVE BRPOPLPUSH BLPOP BRPOP SADD SREM SMOVE SPOP ZADD ZREM ZINCRBY
    ZREMRANGEBYSCORE ZREMRANGEBYRANK ZREMRANGEBYLEX ZPOPMIN ZPOPMAX XADD XTRIM XDEL"""
WRITES = frozenset(_WRITES.split())
SCRIPTS = frozenset({"EVAL", "EVALSHA", "EVAL_RO", "EVALSHA_RO", "FCALL"})


@dataclass
class CommandLog:
    """Record every command Redis runs on database ``db`` while the ``with`` block runs."""

    url: str
    db: int
    entries: list[dict[str, Any]] = field(default_factory=list)
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._stop = f"bench-suite-monitor-stop-{uuid.uuid4().hex}"
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        client = redis.Redis.from_url(self.url, socket_timeout=None)  # quiet spells happen
        try:
            with client.monitor() as monitor:
                self._started.set()
                while True:
                    entry = monitor.next_command()
                    if self._stop in entry["command"]:
                        return
                    if entry.get("db") == self.db:
                        self.entries.append(entry)
        except BaseException as exc:  # reported by __exit__
            self.error = exc
            self._started.set()
        finally:
            client.close()

    def __enter__(self) -> CommandLog:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        client = redis.Redis.from_url(self.url)
        try:
            client.echo(self._stop)
        finally:
            client.close()
        self._thread.join(30)
        if self.error is not None:
            raise RuntimeError(f"MONITOR failed: {self.error!r}") from self.error

    def count(self, task_id: str) -> dict[str, int]:
        """Commands naming ``task_id`` (outside scripts) and, of those, write round trips."""
        commands = writes = 0
        in_multi: dict[str, list[bool]] = {}
        script: list[bool] | None = None  # [already counted as a write] of the open script
        for entry in self.entries:
            text: str = entry["command"]
            name = text.split(" ", 1)[0].upper()
            if entry.get("client_type") == "lua":
                if script is not None and not script[0] and name in WRITES:
                    script[0] = True
                    writes += 1
                continue
            script = None
            client = f"{entry.get('client_address')}:{entry.get('client_port')}"
            if name == "MULTI":
                in_multi[client] = [False]
                continue
            if name in ("EXEC", "DISCARD"):
                in_multi.pop(client, None)
                continue
            if task_id not in text:
                continue
            commands += 1
            if name in SCRIPTS:
                script = [False]
                continue
            if name in WRITES:
                block = in_multi.get(client)
                if block is None:
                    writes += 1
                elif not block[0]:
                    block[0] = True
                    writes += 1
        return {"commands": commands, "writes": writes}
