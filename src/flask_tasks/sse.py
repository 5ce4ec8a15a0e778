"""Server-Sent Events for task records: ``GET <prefix>/<id>/events``.

The stream sends the record each time it changes, with exactly the JSON ``GET
<prefix>/<id>`` returns, and ends after a record in a final state::

    retry: 2000

    id: 1763719204123456
    event: record
    data: {"id": "5b0c...", "state": "running", ...}

    : keep-alive

An event's ``id`` is the record's ``updated_at`` in whole microseconds since the epoch; a
reconnecting client sends the last one back as ``Last-Event-ID`` and is not sent that
record again. A ``: keep-alive`` comment goes out after :data:`KEEPALIVE_INTERVAL` seconds
without output, which keeps proxies from closing an idle stream and lets the server notice
a client that went away.

How a stream learns about changes depends on the store, and costs the same whatever the
number of streams:

* **Redis**: pushed. One subscriber per store and process (a thread, one pub/sub
  connection) SUBSCRIBEs to the record's events channel while someone watches it and
  wakes the streams waiting on it. A progress notification carries the new progress, so
  no read is needed for it; any other change is read once (:meth:`RecordStore.get`) for
  all the streams of the task. When the subscriber loses its connection it reconnects,
  subscribes again and makes every stream read its record again, so no change is missed.
* **SQL** (and any other store): polled. One poller per store and process reads the
  ``updated_at`` of every watched record in one query each :data:`POLL_INTERVAL`
  seconds, and the whole rows of those that changed in a second one.

Both run in a thread started by the first stream of the process that serves it (never at
import, so a server that forks after loading the app, like gunicorn with ``--preload``,
starts them in its workers), and stop :data:`IDLE_TIMEOUT` seconds after the last stream
ends. Under gevent, the monkey-patched ``threading`` makes them greenlets.

A stream occupies a worker thread (or greenlet) for as long as it lasts: see
``docs/sse.md`` for the servers that suit it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import selectors
import socket
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from flask import current_app, request, stream_with_context
from redis.exceptions import RedisError

from . import views
from .state import Progress, TaskRecord
from .store.base import StoreError
from .store.redis import RedisStore
from .store.sql import SQLStore

if TYPE_CHECKING:
    from flask import Flask

    from .extension import TasksState
    from .store.base import RecordStore

logger = logging.getLogger("flask_tasks")

KEEPALIVE_INTERVAL = 15.0
"""Seconds without output after which a ``: keep-alive`` comment is sent."""
RETRY_MS = 2000
"""The reconnection delay the stream asks browsers to use (its ``retry:`` field)."""
POLL_INTERVAL = 0.25
"""Seconds between two polls of the watched records (stores without notifications)."""
IDLE_TIMEOUT = 30.0
"""Seconds a subscriber or poller with nothing to watch waits before it stops."""
READ_RETRY = 1.0
"""Seconds a stream waits before reading its record again after the store failed."""
HEALTH_INTERVAL = 30.0
"""Seconds of silence on the subscriber's connection after which it sends a PING."""
PING_TIMEOUT = 10.0
"""Seconds the subscriber waits for that PING's answer before it reconnects."""
READ_CONCURRENCY = 16
"""Most store reads the streams of one store and process run at once (under gevent, many
records changing state together would otherwise take a connection each)."""
SUBSCRIBER_NAME = "flask-tasks-sse"
"""The Redis client name of the subscriber's connection (``CLIENT LIST`` shows it)."""

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)
_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
_BATCH = 500  # channels per SUBSCRIBE, ids per poll query


def version(record: TaskRecord) -> int:
    """A record's version: its ``updated_at`` in whole microseconds since the epoch."""
    updated_at = record.updated_at
    if updated_at.tzinfo is None:
        updated_at = updated_at.replace(tzinfo=datetime.timezone.utc)
    return (updated_at - _EPOCH) // _MICROSECOND


# -- the view -----------------------------------------------------------------------------


def stream(task_id: str) -> Any:
    """``GET <prefix>/<id>/events``: the record's changes as Server-Sent Events.

    404 and 503 (JSON, as ``GET <prefix>/<id>``) are answered before any stream starts.
    """
    last_event_id = request.headers.get("Last-Event-ID")
    try:
        # Fresh, not the status view's cached copy: the first event is the record as it is.
        record = views._visible(task_id, "read", fresh=True)
    except StoreError as exc:
        return views._unavailable(exc)
    if record is None:
        return views._not_found()
    state = views._state()
    release = _take_slot(state)
    if release is None:
        response, status = views._error(
            429,
            "too_many_streams",
            "Too many event streams are open for this client; close one, or poll "
            f"GET {request.script_root}{state.settings.url_prefix.rstrip('/')}/<id> instead.",
        )
        response.headers["Retry-After"] = str(LIMIT_RETRY_AFTER)
        return response, status
    skip_first = last_event_id is not None and last_event_id.strip() == str(version(record))
    try:
        body = stream_with_context(
            _events(state.store, record, skip_first=skip_first, keepalive=KEEPALIVE_INTERVAL)
        )
        response = current_app.response_class(
            body, content_type="text/event-stream", headers=_HEADERS
        )
    except BaseException:
        release()
        raise
    # Called when the server closes the body, whether or not the stream ever started.
    response.call_on_close(release)
    return response


# -- streams per client -------------------------------------------------------------------

LIMIT_RETRY_AFTER = 5
"""Seconds a client over ``TASKS_SSE_MAX_PER_CLIENT`` is asked to wait (``Retry-After``)."""

_open_streams: weakref.WeakKeyDictionary[TasksState, dict[str, int]] = weakref.WeakKeyDictionary()
_open_streams_lock = threading.Lock()


def _client() -> str:
    """Who a stream counts against: its owner, else its remote address."""
    owner = views._state().extension.current_owner()
    if owner is not None:
        return f"owner:{owner}"
    return f"addr:{request.remote_addr or '?'}"


def _take_slot(state: TasksState) -> Callable[[], None] | None:
    """Count one more stream for this client; a function that gives it back, or None when
    the client holds ``TASKS_SSE_MAX_PER_CLIENT`` streams already (in this process)."""
    limit: int = state.settings.sse_max_per_client
    client = _client()
    with _open_streams_lock:
        counts = _open_streams.setdefault(state, {})
        held = counts.get(client, 0)
        if limit and held >= limit:
            return None
        counts[client] = held + 1
    released = False

    def release() -> None:
        nonlocal released
        with _open_streams_lock:
            if released:
                return
            released = True
            left = counts.get(client, 1) - 1
            if left > 0:
                counts[client] = left
            else:
                counts.pop(client, None)

    return release


def open_streams(app: Flask) -> dict[str, int]:
    """Open event streams per client in this process (``owner:<id>`` or ``addr:<ip>``)."""
    with _open_streams_lock:
        return dict(_open_streams.get(app.extensions["tasks"], {}))


def _events(
    store: RecordStore, first: TaskRecord, *, skip_first: bool, keepalive: float
) -> Iterator[bytes]:
    """The stream's body, run inside the request's context (``stream_with_context``)."""
    extension = views._state().extension
    head = f"retry: {RETRY_MS}\n\n".encode()
    sent = version(first)
    if not skip_first:
        head += _event(first, sent, None)
    if first.finished:
        yield head
        return
    hub = _hub_for(store)
    watcher = hub.watch(first.id, sent)
    try:
        yield head
        owner = first.owner  # the owner the caller was allowed to read the record of
        last_output = time.monotonic()
        retry_at = 0.0
        while True:
            watcher.wake.clear()
            topic = watcher.topic
            now = time.monotonic()
            if topic.ready and topic.seq != watcher.seen and now >= retry_at:
                try:
                    record, watcher.seen = hub.current(store, topic)
                except StoreError as exc:
                    logger.warning("flask-tasks: an event stream could not read its task: %s", exc)
                    retry_at = now + READ_RETRY
                    continue
                if record is None:
                    return  # deleted or expired: nothing more will come
                if record.owner != owner:  # only a re-used id can do that
                    if not extension.allowed("read", record):
                        return
                    owner = record.owner
                current = version(record)
                if current != sent:
                    sent = current
                    yield _event(record, current, topic)
                    last_output = time.monotonic()
                    if record.finished:
                        return
                continue
            wait = last_output + keepalive - now
            if retry_at > now:
                wait = min(wait, retry_at - now)
            woken = wait > 0 and watcher.wake.wait(wait)
            if not woken and time.monotonic() >= last_output + keepalive:
                yield b": keep-alive\n\n"
                last_output = time.monotonic()
    finally:
        hub.unwatch(watcher)


def _event(record: TaskRecord, record_version: int, topic: _Topic | None) -> bytes:
    """One ``record`` event; its JSON rendered once per topic and kind of request."""
    variant = (current_app.debug, request.script_root)
    data = None
    if topic is not None:
        cached = topic.rendered.get(variant)
        if cached is not None and cached[0] is record:
            data = cached[1]
    if data is None:
        data = current_app.json.dumps(views.record_json(record))
        if topic is not None:
            topic.rendered[variant] = (record, data)
    # A JSON body is one line, unless an app's JSON provider indents: SSE joins data lines
    # with newlines, so the client gets the body as it was either way.
    lines = "".join(f"data: {line}\n" for line in data.splitlines() or [""])
    return f"id: {record_version}\nevent: record\n{lines}\n".encode()


# -- watching records -----------------------------------------------------------------------


class _Topic:
    """One watched record, shared by every stream of this process that watches it."""

    __slots__ = (
        "key",
        "lock",
        "polled",
        "read_lock",
        "ready",
        "record",
        "record_seq",
        "rendered",
        "seq",
        "task_id",
        "watchers",
    )

    def __init__(self, task_id: str, key: str) -> None:
        self.task_id = task_id
        self.key = key
        self.watchers: set[_Watcher] = set()
        self.lock = threading.Lock()  # guards the fields below
        self.read_lock = threading.Lock()  # one read of the store at a time
        self.ready = False
        """Subscribed (Redis) or polled once: from now on, every change is noticed."""
        self.seq = 0
        """Counts notifications: a record read before the last one may be out of date."""
        self.record: TaskRecord | None = None
        self.record_seq = -1
        """The ``seq`` that ``record`` is up to date with."""
        self.polled: int | None = None
        """The version the poller last saw."""
        self.rendered: dict[Any, tuple[TaskRecord, str]] = {}

    def changed(self, record: TaskRecord | None = None, *, known: bool = False) -> None:
        """Note a change (and the record as it is now, when ``known``); wake the streams."""
        with self.lock:
            self.seq += 1
            if known:
                self.record, self.record_seq = record, self.seq
            watchers = list(self.watchers)
        for watcher in watchers:
            watcher.wake.set()


class _Watcher:
    """One stream's place on a topic, and what wakes it up."""

    __slots__ = ("seen", "topic", "wake")

    def __init__(self, topic: _Topic) -> None:
        self.topic = topic
        self.wake = threading.Event()
        self.seen = -1  # the topic's seq of the last record this stream looked at


class _Hub:
    """Every watched record of one store in this process, and the thread that watches them.

    The thread starts with the first watcher and stops ``IDLE_TIMEOUT`` seconds after the
    last one left (or at :func:`shutdown`).
    """

    name = "flask-tasks-sse"

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._topics: dict[str, _Topic] = {}
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._idle_since = time.monotonic()
        self._reads = threading.BoundedSemaphore(READ_CONCURRENCY)

    # -- for the streams --------------------------------------------------------------------

    def key(self, task_id: str) -> str:
        return task_id

    def watch(self, task_id: str, seen_version: int) -> _Watcher:
        """Start watching ``task_id`` for a stream that last sent ``seen_version``."""
        key = self.key(task_id)
        with self._lock:
            topic = self._topics.get(key)
            if topic is None:
                topic = self._topics[key] = _Topic(task_id, key)
                self._added(topic)
            elif topic.record is not None and version(topic.record) != seen_version:
                # The stream read the record itself, maybe after a change whose news is on
                # its way: which of the two is newer, only a fresh read tells.
                with topic.lock:
                    topic.seq += 1
            watcher = _Watcher(topic)
            topic.watchers.add(watcher)
            self._stopping = False
            if self._thread is None:
                self._thread = self._start()
        return watcher

    def unwatch(self, watcher: _Watcher) -> None:
        """A stream ended: forget it, and its record when nobody else watches it."""
        topic = watcher.topic
        with self._lock:
            topic.watchers.discard(watcher)
            if not topic.watchers and self._topics.get(topic.key) is topic:
                del self._topics[topic.key]
                self._removed(topic)
                if not self._topics:
                    self._idle_since = time.monotonic()

    def current(self, store: RecordStore, topic: _Topic) -> tuple[TaskRecord | None, int]:
        """The record as of the topic's last notification (read once for all its streams),
        and the ``seq`` it is up to date with. Raises :class:`StoreError`."""
        with topic.lock:
            if topic.record_seq >= topic.seq:
                return topic.record, topic.record_seq
        with topic.read_lock:
            with topic.lock:
                if topic.record_seq >= topic.seq:  # another stream just read it
                    return topic.record, topic.record_seq
                seq = topic.seq
            with self._reads:
                record = store.get(topic.task_id)
            with topic.lock:
                if seq > topic.record_seq:
                    topic.record, topic.record_seq = record, seq
                return topic.record, topic.record_seq

    # -- for tests and benchmarks -----------------------------------------------------------

    def stats(self) -> dict[str, int]:
        """How many records and streams are watched, and whether the thread runs."""
        with self._lock:
            return {
                "topics": len(self._topics),
                "watchers": sum(len(t.watchers) for t in self._topics.values()),
                "running": int(self._thread is not None),
            }

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (it starts again with the next watcher)."""
        with self._lock:
            self._stopping = True
            thread = self._thread
            self._poke()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the thread -------------------------------------------------------------------------

    def _start(self) -> threading.Thread:
        waker = self._waker()
        thread = threading.Thread(target=self._main, args=(waker,), name=self.name, daemon=True)
        _running.add(self)
        thread.start()
        return thread

    def _main(self, waker: Any) -> None:
        try:
            self._run(waker)
        except Exception:  # pragma: no cover - a bug; the next watcher starts a new thread
            logger.exception("flask-tasks: the event stream thread failed")
        finally:
            with self._lock:
                if self._thread is threading.current_thread():  # it failed
                    self._thread = None
                    self._reset()
                if self._thread is None:  # (or a new one runs already)
                    _running.discard(self)
                self._finished(waker)

    def _exit_now(self) -> bool:
        """Whether the thread should stop (called with the lock held)."""
        idle = not self._topics and time.monotonic() - self._idle_since >= IDLE_TIMEOUT
        if self._stopping or idle:
            self._thread = None
            self._reset()
            return True
        return False

    def _waker(self) -> Any:
        """What the next thread is woken up with (lock held)."""
        return None

    def _run(self, waker: Any) -> None:
        raise NotImplementedError

    def _added(self, topic: _Topic) -> None:
        """A record is watched now (lock held)."""

    def _removed(self, topic: _Topic) -> None:
        """A record is not watched any more (lock held)."""

    def _poke(self) -> None:
        """Wake the thread up (lock held)."""

    def _finished(self, waker: Any) -> None:
        """The thread ended: free what ``_waker`` made (lock held)."""

    def _reset(self) -> None:
        """The thread is stopping: another may start (lock held)."""


# -- Redis: one subscriber ----------------------------------------------------------------


class _RedisHub(_Hub):
    """One pub/sub connection per process for every stream on a Redis store."""

    name = "flask-tasks-sse-subscriber"

    def __init__(self, store: RedisStore) -> None:
        super().__init__()
        self._channel_prefix = store.events_channel("")
        pool = store.client.connection_pool
        self._connection_class: Any = pool.connection_class
        self._connection_kwargs: dict[str, Any] = {
            **pool.connection_kwargs,
            "client_name": f"{SUBSCRIBER_NAME}:{os.getpid()}",
            "protocol": 2,
        }
        # Under the lock: what to send, and what was sent (the server's state once the
        # replies of the channel's pending commands arrive).
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._sent: dict[str, bool] = {}  # channel -> last command was SUBSCRIBE
        self._pending: dict[str, int] = {}  # channel -> replies still to come
        self._wake_w: socket.socket | None = None

    def key(self, task_id: str) -> str:
        return self._channel_prefix + task_id

    def stats(self) -> dict[str, int]:
        stats = super().stats()
        with self._lock:
            stats["subscribed"] = sum(
                1 for ch, sub in self._sent.items() if sub and ch not in self._pending
            )
        return stats

    def _added(self, topic: _Topic) -> None:
        channel = topic.key
        self._to_unsubscribe.discard(channel)
        if self._sent.get(channel):
            if channel not in self._pending:
                topic.ready, topic.seq = True, 1  # subscribed all along
            # else: the pending SUBSCRIBE's reply makes it ready
        else:
            self._to_subscribe.add(channel)
            self._poke()

    def _removed(self, topic: _Topic) -> None:
        channel = topic.key
        self._to_subscribe.discard(channel)
        if self._sent.get(channel):
            self._to_unsubscribe.add(channel)
            self._poke()

    def _waker(self) -> tuple[socket.socket, socket.socket]:
        # A pair of sockets per thread: a byte written to one wakes the thread's select().
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        self._wake_w = wake_w
        return wake_r, wake_w

    def _poke(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):  # full: it is awake already
                self._wake_w.send(b"!")

    def _finished(self, waker: tuple[socket.socket, socket.socket]) -> None:
        wake_r, wake_w = waker
        if self._wake_w is wake_w:
            self._wake_w = None
        wake_r.close()
        wake_w.close()

    def _lost(self) -> None:
        """The connection is gone: nothing is subscribed, every topic waits."""
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        """Nothing is subscribed (lock held)."""
        self._sent.clear()
        self._pending.clear()
        self._to_unsubscribe.clear()
        self._to_subscribe = set(self._topics)
        for topic in self._topics.values():
            topic.ready = False

    def _run(self, waker: tuple[socket.socket, socket.socket]) -> None:
        wake = waker[0]
        delay = 0.0
        while True:
            with self._lock:
                if self._exit_now():
                    return
            connection = self._connection_class(**self._connection_kwargs)
            try:
                connection.connect()
                if delay:
                    logger.warning("flask-tasks: the event subscriber is connected again")
                delay = 0.0
                if self._serve(connection, wake):
                    return
            except (RedisError, OSError, ValueError) as exc:
                if not delay:
                    logger.warning(
                        "flask-tasks: the event subscriber lost its Redis connection (%s); "
                        "reconnecting",
                        exc,
                    )
                delay = min(max(delay * 2, 0.1), 5.0)
            finally:
                connection.disconnect()
            self._lost()
            with _selector(wake) as selector:
                _wait(selector, wake, delay)

    def _serve(self, connection: Any, wake: socket.socket) -> bool:
        """Subscribe, read and dispatch until told to stop (True) or the connection fails."""
        sock = getattr(connection, "_sock", None)
        if sock is None:  # pragma: no cover - a connection class without a socket
            return self._loop(connection, None, wake)
        with _selector(sock, wake) as selector:
            return self._loop(connection, selector, wake)

    def _loop(
        self, connection: Any, selector: selectors.BaseSelector | None, wake: socket.socket
    ) -> bool:
        last_io = time.monotonic()
        ping_sent: float | None = None
        while True:
            with self._lock:
                if self._exit_now():
                    return True
                subscribe = sorted(self._to_subscribe)
                unsubscribe = sorted(self._to_unsubscribe)
                self._to_subscribe.clear()
                self._to_unsubscribe.clear()
                for channel in subscribe:
                    self._sent[channel] = True
                    self._pending[channel] = self._pending.get(channel, 0) + 1
                for channel in unsubscribe:
                    self._sent[channel] = False
                    self._pending[channel] = self._pending.get(channel, 0) + 1
            for command, channels in (("UNSUBSCRIBE", unsubscribe), ("SUBSCRIBE", subscribe)):
                for start in range(0, len(channels), _BATCH):
                    connection.send_command(command, *channels[start : start + _BATCH])
            now = time.monotonic()
            if ping_sent is None and now - last_io >= HEALTH_INTERVAL:
                connection.send_command("PING")
                ping_sent = now
            elif ping_sent is not None and now - ping_sent >= PING_TIMEOUT:
                raise TimeoutError(f"no answer to PING within {PING_TIMEOUT}s")
            if not connection.can_read(0):
                deadline = (ping_sent + PING_TIMEOUT) if ping_sent else (last_io + HEALTH_INTERVAL)
                timeout = min(max(deadline - now, 0.0), 1.0 if not self._topics else 5.0)
                if selector is None:  # pragma: no cover
                    connection.can_read(min(timeout, 0.05))
                else:
                    _wait(selector, wake, timeout)
            while connection.can_read(0):
                reply = connection.read_response()
                last_io = time.monotonic()
                if self._dispatch(reply):
                    ping_sent = None

    def _dispatch(self, reply: Any) -> bool:
        """Handle one pub/sub reply; True for the answer to a PING."""
        if not isinstance(reply, list) or not reply:
            return False
        kind = _text(reply[0])
        if kind == "message" and len(reply) >= 3:
            channel = _text(reply[1])
            topic = self._topics.get(channel)
            if topic is not None:
                self._notify(topic, reply[2])
        elif kind in ("subscribe", "unsubscribe") and len(reply) >= 2:
            channel = _text(reply[1])
            ready = None
            with self._lock:
                left = self._pending.get(channel, 0) - 1
                if left > 0:
                    self._pending[channel] = left
                else:
                    self._pending.pop(channel, None)
                    if self._sent.get(channel):
                        ready = self._topics.get(channel)
                    else:
                        self._sent.pop(channel, None)
                if ready is not None:
                    ready.ready = True
            if ready is not None:
                ready.changed()  # read the record now: changes before this went unseen
        elif kind == "pong":
            return True
        return False

    def _notify(self, topic: _Topic, data: bytes | str) -> None:
        """A change of the record: take the progress a progress write carries, or have the
        next stream that wakes up read the record."""
        with topic.lock:
            record = None
            if topic.record is not None and topic.record_seq == topic.seq:
                record = _with_progress(topic.record, data)
            topic.seq += 1
            if record is not None:
                topic.record, topic.record_seq = record, topic.seq
            watchers = list(topic.watchers)
        for watcher in watchers:
            watcher.wake.set()


def _with_progress(record: TaskRecord, data: bytes | str) -> TaskRecord | None:
    """``record`` after the progress write ``data`` announces, or None when the message
    says more than that (a state change: result, error and meta need a read)."""
    try:
        message = json.loads(data)
        if not isinstance(message, dict) or message.get("state") != record.state.value:
            return None
        progress = message.get("progress")
        if not isinstance(progress, dict):
            return None
        at = datetime.datetime.fromtimestamp(float(message["updated_at"]), datetime.timezone.utc)
        if at <= record.updated_at:
            return None  # older news than the record read (or the write it already shows)
        return record.evolve(
            progress=Progress.from_dict(progress),
            updated_at=at,
            cancel_requested=record.cancel_requested or bool(message.get("cancel_requested")),
        )
    except (ValueError, TypeError, KeyError, OverflowError):
        return None


def _selector(*socks: Any) -> selectors.BaseSelector:
    """A selector for reading ``socks``.

    ``selectors`` rather than ``select.select``: a process serving thousands of streams
    has descriptors above select()'s limit of 1024. (gevent patches both.)
    """
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    return selector


def _wait(selector: selectors.BaseSelector, wake: socket.socket, timeout: float) -> None:
    """Wait until a socket of ``selector`` is readable; empty ``wake`` if it is one."""
    if any(key.fileobj is wake for key, _ in selector.select(timeout)):
        with contextlib.suppress(OSError):
            while wake.recv(4096):
                pass


def _text(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


# -- other stores: one poller -------------------------------------------------------------


class _PollHub(_Hub):
    """Polls every watched record of a store, one ``get`` each, every ``POLL_INTERVAL``."""

    name = "flask-tasks-sse-poller"

    def __init__(self, store: RecordStore) -> None:
        super().__init__()
        self._store = weakref.ref(store)
        self._kick = threading.Event()
        self._failing = False

    def _added(self, topic: _Topic) -> None:
        self._kick.set()

    def _poke(self) -> None:
        self._kick.set()

    def _run(self, waker: Any) -> None:
        while True:
            self._kick.clear()
            with self._lock:
                if self._exit_now():
                    return
                topics = list(self._topics.values())
            store = self._store()
            if store is None:
                return
            if topics:
                try:
                    self._poll(store, topics)
                except StoreError as exc:
                    if not self._failing:
                        logger.warning("flask-tasks: event streams cannot poll: %s", exc)
                    self._failing = True
                else:
                    if self._failing:
                        logger.warning("flask-tasks: event streams can poll again")
                    self._failing = False
            del store
            self._kick.wait(POLL_INTERVAL if topics else 1.0)

    def _poll(self, store: RecordStore, topics: list[_Topic]) -> None:
        for topic in topics:
            record = store.get(topic.task_id)
            seen = None if record is None else version(record)
            if not topic.ready or seen != topic.polled:
                _publish(topic, record, seen)


class _SQLPollHub(_PollHub):
    """Polls an SQL store: one query for the versions of every watched record, one for the
    rows of those that changed."""

    def __init__(self, store: SQLStore) -> None:
        super().__init__(store)
        from sqlalchemy import bindparam, select

        table = store._record
        c = table.c
        ids = c.id.in_(bindparam("p_ids", expanding=True))
        live = c.expires_at > bindparam("p_now", type_=c.expires_at.type)
        self._versions = select(c.id, c.updated_at).where(ids, live)
        self._rows = select(*table.c).where(ids, live)

    def _poll(self, store: RecordStore, topics: list[_Topic]) -> None:
        assert isinstance(store, SQLStore)
        from . import _engines
        from .store.sql import _to_record

        def query(statement: Any, ids: list[str]) -> list[Any]:
            params = {"p_ids": ids, "p_now": _engines.utcnow()}
            rows: list[Any] = store._run(
                "poll task records", lambda c: list(c.execute(statement, params))
            )
            return rows

        ids = [topic.task_id for topic in topics]
        versions: dict[str, int] = {}
        for start in range(0, len(ids), _BATCH):
            for task_id, updated_at in query(self._versions, ids[start : start + _BATCH]):
                versions[task_id] = (updated_at - _EPOCH) // _MICROSECOND
        changed = [
            topic
            for topic in topics
            if not topic.ready or versions.get(topic.task_id) != topic.polled
        ]
        fetch = [topic.task_id for topic in changed if topic.task_id in versions]
        records: dict[str, TaskRecord] = {}
        for start in range(0, len(fetch), _BATCH):
            for row in query(self._rows, fetch[start : start + _BATCH]):
                records[row.id] = _to_record(row)
        for topic in changed:
            record = records.get(topic.task_id)
            _publish(topic, record, None if record is None else version(record))


def _publish(topic: _Topic, record: TaskRecord | None, seen: int | None) -> None:
    topic.polled = seen
    topic.ready = True
    topic.changed(record, known=True)


# -- one hub per store and process ------------------------------------------------------------

_hubs: weakref.WeakKeyDictionary[RecordStore, _Hub] = weakref.WeakKeyDictionary()
_hubs_lock = threading.Lock()
_running: set[_Hub] = set()  # hubs with a thread, even those whose store is gone


def _hub_for(store: RecordStore) -> _Hub:
    with _hubs_lock:
        hub = _hubs.get(store)
        if hub is None or hub.pid != os.getpid():
            if isinstance(store, RedisStore):
                hub = _RedisHub(store)
            elif isinstance(store, SQLStore):
                hub = _SQLPollHub(store)
            else:
                hub = _PollHub(store)
            _hubs[store] = hub
        return hub


def hub(store: RecordStore) -> _Hub | None:
    """The subscriber or poller of ``store`` in this process, if a stream ever started one.

    Its ``stats()`` tell how many records (``topics``) and streams (``watchers``) it
    watches, and for Redis how many channels it is ``subscribed`` to.
    """
    with _hubs_lock:
        found = _hubs.get(store)
    return found if found is not None and found.pid == os.getpid() else None


def shutdown(timeout: float = 5.0) -> None:
    """Stop every subscriber and poller of this process (tests; they restart on demand)."""
    with _hubs_lock:
        hubs = {*_hubs.values(), *_running}
    for each in hubs:
        each.stop(timeout)


def _after_fork() -> None:
    """A forked child has none of its parent's threads: it starts its own hubs."""
    global _hubs, _hubs_lock, _running
    _hubs = weakref.WeakKeyDictionary()
    _hubs_lock = threading.Lock()
    _running = set()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
