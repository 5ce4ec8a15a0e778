"""The embedded broker: Kombu's SQLAlchemy transport, made dependable.

Select it with a broker URL of the form ``tasksdb+<SQLAlchemy URL>``::

    tasksdb+sqlite:////srv/app/instance/tasks.sqlite3
    tasksdb+postgresql+psycopg://postgres@127.0.0.1/test

Importing this module registers the ``tasksdb`` scheme with Kombu (see :func:`register`).

It keeps Kombu's schema (tables ``kombu_queue`` and ``kombu_message``) and Kombu's virtual
transport machinery, and changes how messages move through the tables:

* **Polling** is cheap and frequent: an idle poll is one plain ``SELECT`` that takes no
  write lock; the write lock (``BEGIN IMMEDIATE`` on SQLite, ``FOR UPDATE SKIP LOCKED``
  elsewhere) is taken only when a candidate row exists.
* **Tables and queues are created race-free** across processes.
* **An acked message is deleted.** A rejected message is deleted; a requeued or restored one
  makes its original row visible again (no duplicate is inserted).
* **Visibility timeout with heartbeat.** A delivered row is hidden, not deleted. While the
  consumer lives, a daemon thread refreshes the timestamp of every row it holds unacked, so
  a long task is never redelivered. When the consumer dies (SIGKILL, power loss), the rows
  are no longer refreshed and become visible again ``visibility_timeout`` seconds later.
  Timestamps are taken from the clients' clocks (UTC): hosts sharing one database server
  must keep their clocks within a fraction of the visibility timeout of each other, and
  every consumer of one database should use the same ``visibility_timeout``.
* **SQLite** connections use WAL, ``synchronous=NORMAL`` and a busy timeout; engines are
  cached per process, so a forked child never reuses its parent's connections.
* **Errors are loud**: a publish that cannot be stored raises, and SQLAlchemy's
  ``OperationalError`` is a connection error to Kombu and Celery.

The transport has no fanout exchange, so Celery's remote control (``revoke``,
``inspect``) and the mingle/gossip steps are not available on it.

Transport options (``broker_transport_options``):

=====================  ==========  =====================================================
option                 default     meaning
=====================  ==========  =====================================================
``polling_interval``   ``0.01``    seconds to sleep after a poll that found nothing
``visibility_timeout`` ``60.0``    seconds after which a row delivered to a consumer
                                   that stopped heartbeating is delivered again;
                                   heartbeats run every ``visibility_timeout / 4``
``busy_timeout``       ``5000``    SQLite only: milliseconds to wait for a lock
``queue_tablename``    ``kombu_queue``    name of the table of queues
``message_tablename``  ``kombu_message``  name of the table of messages
``engine_options``     ``{}``      keyword arguments for ``sqlalchemy.create_engine``
=====================  ==========  =====================================================

Other options are ignored (Celery and Kombu put their own keys there), except those
Kombu's virtual transport reads itself (``body_encoding``, ``deadletter_queue``).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from queue import Empty
from typing import Any

from kombu.transport import TRANSPORT_ALIASES, virtual
from kombu.transport import sqlalchemy as kombu_sqlalchemy
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Sequence,
    SmallInteger,
    String,
    Table,
    Text,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import (
    DBAPIError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)

from . import _engines

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "DEFAULT_POLLING_INTERVAL",
    "DEFAULT_VISIBILITY_TIMEOUT",
    "SCHEME",
    "Channel",
    "QoS",
    "Transport",
    "dispose_engines",
    "register",
]

SCHEME = "tasksdb"
"""The URL scheme prefix that selects this transport: ``tasksdb+<SQLAlchemy URL>``."""

DEFAULT_POLLING_INTERVAL = 0.01
"""Seconds between two polls of an idle queue."""

DEFAULT_VISIBILITY_TIMEOUT = 60.0
"""Seconds before a message held by a consumer that stopped heartbeating is redelivered."""

DEFAULT_BUSY_TIMEOUT = _engines.DEFAULT_BUSY_TIMEOUT
"""Milliseconds an SQLite connection waits for a lock before failing."""

logger = logging.getLogger(__name__)

_CREATE_ATTEMPTS = 5
_HEARTBEAT_CHUNK = 500

# Kombu ships ``py.typed`` but leaves these classes unannotated: subclass them as ``Any``.
_KombuQoS: Any = virtual.QoS
_KombuChannel: Any = kombu_sqlalchemy.Channel
_KombuTransport: Any = kombu_sqlalchemy.Transport


def register() -> None:
    """Register the ``tasksdb`` URL scheme with Kombu.

    Called when this module is imported; calling it again does nothing new.
    """
    TRANSPORT_ALIASES[SCHEME] = f"{__name__}:Transport"


# -- schema ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Schema:
    """The tables, and the statements on them, built once (polling runs them often)."""

    metadata: MetaData
    queue: Table
    message: Table
    find_queue: Any  # params: name
    peek: Any  # params: queue_id, expired
    take: Any  # params: queue_id, expired
    hide: Any  # params: row_id, now
    show: Any  # params: row_id
    remove: Any  # params: row_id
    count_ready: Any  # params: queue_id, expired
    purge_ready: Any  # params: queue_id, expired

    @classmethod
    def build(cls, metadata: MetaData, queue: Table, message: Table) -> _Schema:
        m = message.c
        ready = and_(
            m.queue_id == bindparam("queue_id"),
            or_(m.visible == true(), m.timestamp < bindparam("expired", type_=DateTime)),
        )
        row_id = bindparam("row_id", type_=Integer)
        return cls(
            metadata=metadata,
            queue=queue,
            message=message,
            find_queue=select(queue.c.id).where(queue.c.name == bindparam("name")),
            peek=select(m.id).where(ready).order_by(m.id).limit(1),
            take=select(m.id, m.payload, m.timestamp).where(ready).order_by(m.id).limit(1),
            hide=update(message)
            .where(m.id == row_id)
            .values(visible=False, timestamp=bindparam("now", type_=DateTime)),
            show=update(message).where(m.id == row_id).values(visible=True),
            remove=delete(message).where(m.id == row_id),
            count_ready=select(func.count()).select_from(message).where(ready),
            purge_ready=delete(message).where(ready),
        )


_SCHEMAS: dict[tuple[str, str], _Schema] = {}


def _schema(queue_tablename: str, message_tablename: str) -> _Schema:
    """The tables for one pair of names: Kombu's columns, with names derived per table.

    Kombu's default names keep Kombu's sequence and index names, so a database created by
    ``sqla+...`` can be used as is.  Other names get their own sequence and index names, so
    two pairs of tables can live in one PostgreSQL schema.
    """
    key = (queue_tablename, message_tablename)
    with _LOCK:
        found = _SCHEMAS.get(key)
        if found is not None:
            return found
        default = key == ("kombu_queue", "kombu_message")
        metadata = MetaData()
        queue = Table(
            queue_tablename,
            metadata,
            Column(
                "id",
                Integer,
                Sequence("queue_id_sequence" if default else f"{queue_tablename}_id_seq"),
                primary_key=True,
                autoincrement=True,
            ),
            Column("name", String(200), unique=True),
            sqlite_autoincrement=True,
            mysql_engine="InnoDB",
        )
        message = Table(
            message_tablename,
            metadata,
            Column(
                "id",
                Integer,
                Sequence("message_id_sequence" if default else f"{message_tablename}_id_seq"),
                primary_key=True,
                autoincrement=True,
            ),
            Column("visible", Boolean, default=True, index=True),
            # Kombu's ``sent_at``: NULL until first delivered, then the time the current
            # holder last claimed or heartbeated the row.
            Column("timestamp", DateTime, nullable=True, index=True),
            Column("payload", Text, nullable=False),
            Column("version", SmallInteger, nullable=False, default=1),
            Column(
                "queue_id",
                Integer,
                ForeignKey(f"{queue_tablename}.id", name=f"FK_{message_tablename}_queue"),
            ),
            Index(f"ix_{message_tablename}_timestamp_id", "timestamp", "id"),
            Index(f"ix_{message_tablename}_queue_id_id", "queue_id", "id"),
            sqlite_autoincrement=True,
            mysql_engine="InnoDB",
        )
        found = _SCHEMAS[key] = _Schema.build(metadata, queue, message)
        return found


# -- engines --------------------------------------------------------------------------------

_LOCK = threading.RLock()
# Engine keys + table names whose tables this process has made sure exist.
_PREPARED: set[tuple[Any, ...]] = set()


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.RLock()
    _PREPARED.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def dispose_engines() -> None:
    """Close the pooled connections of every engine this process's transport created.

    For tests and shutdown hooks; the engines reconnect when used again.
    """
    _engines.dispose_engines()


def _engine(url: str, busy_timeout: int, engine_options: Mapping[str, Any]) -> Engine:
    return _engines.get_engine(url, busy_timeout=busy_timeout, options=engine_options)


def _prepare(engine: Engine, schema: _Schema) -> None:
    """Create the tables unless they exist, safely when many processes start at once."""
    for attempt in range(_CREATE_ATTEMPTS):
        try:
            with _write(engine) as connection:
                schema.metadata.create_all(connection, checkfirst=True)
            return
        except (IntegrityError, ProgrammingError, OperationalError):
            # Another process created them between our check and our CREATE (PostgreSQL),
            # or held the lock for too long: roll back (done) and check again.
            if attempt == _CREATE_ATTEMPTS - 1:
                raise


_write = _engines.write
_read = _engines.read
_utcnow = _engines.utcnow
_is_busy = _engines.is_busy


# -- the channel ----------------------------------------------------------------------------


class QoS(_KombuQoS):  # type: ignore[misc]
    """Kombu's QoS, where ack and reject delete the row and requeue makes it visible."""

    def ack(self, delivery_tag: str) -> None:
        self.channel._forget(delivery_tag)
        super().ack(delivery_tag)

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if not requeue:
            self.channel._forget(delivery_tag)
        # With ``requeue``, Kombu calls ``Channel._restore_at_beginning``.
        super().reject(delivery_tag, requeue=requeue)


class Channel(_KombuChannel):  # type: ignore[misc]
    """A channel on the message tables, with delete-on-ack and heartbeated deliveries."""

    QoS = QoS

    def _configure_entity_tablenames(self, opts: Mapping[str, Any]) -> None:
        # Called by Kombu's ``__init__`` before anything else: read our options here.
        self.queue_tablename = str(opts.get("queue_tablename") or "kombu_queue")
        self.message_tablename = str(opts.get("message_tablename") or "kombu_message")
        self._schema = _schema(self.queue_tablename, self.message_tablename)
        self.visibility_timeout = float(
            opts.get("visibility_timeout") or DEFAULT_VISIBILITY_TIMEOUT
        )
        if self.visibility_timeout <= 0:
            raise ValueError(
                f"visibility_timeout = {self.visibility_timeout!r} must be a positive number"
                " of seconds, e.g. broker_transport_options={'visibility_timeout': 60}."
            )
        busy = opts.get("busy_timeout")
        self.busy_timeout = int(DEFAULT_BUSY_TIMEOUT if busy is None else busy)
        engine_options = opts.get("engine_options") or {}
        if not isinstance(engine_options, Mapping):
            raise TypeError(
                f"engine_options = {engine_options!r} must be a dict of keyword arguments"
                " for sqlalchemy.create_engine()."
            )
        self.engine_options = dict(engine_options)
        self._pid = os.getpid()
        self._queue_ids: dict[str, int] = {}
        self._hot: set[str] = set()
        self._no_ack_queues: set[str] = set()
        # delivery tag -> row id of every message this channel holds unacked.
        self._held: dict[str, int] = {}
        # rows acked or rejected whose DELETE failed: kept hidden and retried.
        self._undeleted: set[int] = set()
        self._held_lock = threading.Lock()
        self._heartbeat: _Heartbeat | None = None
        self._opened: tuple[int, Engine] | None = None

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the database (the broker URL without ``tasksdb+``)."""
        url = str(self.connection.client.hostname)
        if url.startswith(f"{SCHEME}+"):
            url = url[len(SCHEME) + 1 :]
        return url

    def _open(self) -> Engine:
        """This process's engine for the database, with the tables created."""
        pid = os.getpid()
        if self._opened is not None and self._opened[0] == pid:
            return self._opened[1]
        url = self.url
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
            raise ValueError(
                f"{url!r} is an in-memory SQLite database, which other processes cannot see;"
                f" use a file: {SCHEME}+sqlite:////absolute/path/tasks.sqlite3"
            )
        engine = _engine(url, self.busy_timeout, self.engine_options)
        key = (pid, id(engine), self.queue_tablename, self.message_tablename)
        if key not in _PREPARED:
            _prepare(engine, self._schema)
            _PREPARED.add(key)
        self._opened = (pid, engine)
        return engine

    @property
    def session(self) -> Any:
        raise NotImplementedError("this transport uses SQLAlchemy Core, not an ORM session")

    def _query_all(self, queue: str) -> Any:
        raise NotImplementedError("this transport uses SQLAlchemy Core, not an ORM session")

    # -- queues -----------------------------------------------------------------------------

    def _get_or_create(self, queue: str) -> int:
        """The id of ``queue``'s row, inserted if missing; safe against concurrent inserts."""
        table = self._schema.queue
        engine = self._open()
        error: IntegrityError | None = None
        for _ in range(_CREATE_ATTEMPTS):
            with _read(engine) as connection:
                queue_id = connection.execute(self._schema.find_queue, {"name": queue}).scalar()
            if queue_id is not None:
                return int(queue_id)
            try:
                with _write(engine) as connection:
                    connection.execute(insert(table).values(name=queue))
            except IntegrityError as exc:
                error = exc  # created by another process in between: read it
        assert error is not None
        raise error

    def _queue_id(self, queue: str) -> int:
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            queue_id = self._queue_ids[queue] = self._get_or_create(queue)
        return queue_id

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self._queue_id(queue)

    def _has_queue(self, queue: str, **kwargs: Any) -> bool:
        with _read(self._open()) as connection:
            found = connection.execute(self._schema.find_queue, {"name": queue})
            return found.first() is not None

    def _ready(self, queue: str, now: datetime.datetime) -> dict[str, Any]:
        """Parameters selecting the rows of ``queue`` that may be delivered at ``now``."""
        expired = now - datetime.timedelta(seconds=self.visibility_timeout)
        return {"queue_id": self._queue_id(queue), "expired": expired}

    def _size(self, queue: str) -> int:
        with _read(self._open()) as connection:
            count = connection.execute(self._schema.count_ready, self._ready(queue, _utcnow()))
            return int(count.scalar() or 0)

    def _purge(self, queue: str) -> int:
        """Delete the messages ready for delivery; messages held by live consumers stay."""
        with _write(self._open()) as connection:
            result = connection.execute(self._schema.purge_ready, self._ready(queue, _utcnow()))
            return int(result.rowcount)

    # -- publish and deliver ----------------------------------------------------------------

    def _put(self, queue: str, message: dict[str, Any], **kwargs: Any) -> None:
        table = self._schema.message
        queue_id = self._queue_id(queue)
        with _write(self._open()) as connection:
            connection.execute(
                insert(table).values(
                    queue_id=queue_id, payload=json.dumps(message), visible=True, version=1
                )
            )

    def _get(self, queue: str, timeout: float | None = None) -> dict[str, Any]:
        try:
            return self._claim(queue, remove=queue in self._no_ack_queues)
        except OperationalError as exc:
            if not _is_busy(exc):
                raise
            # The database stayed locked for busy_timeout: try again at the next poll
            # rather than drop the connection (which would restore everything we hold).
            logger.warning("Polling %r: the database is busy (%s); will retry.", queue, exc)
            raise Empty() from None

    def _claim(self, queue: str, *, remove: bool) -> dict[str, Any]:
        """Take the oldest ready message of ``queue``: hide it (or delete it if ``remove``)."""
        schema = self._schema
        engine = self._open()
        now = _utcnow()
        ready = self._ready(queue, now)
        if queue not in self._hot:
            # Idle path: one plain read, no lock.
            with _read(engine) as connection:
                if connection.execute(schema.peek, ready).first() is None:
                    raise Empty()
        take = schema.take
        if engine.dialect.name != "sqlite":
            take = take.with_for_update(skip_locked=True)
        with _write(engine) as connection:
            row = connection.execute(take, ready).first()
            if row is not None:
                if remove:
                    connection.execute(schema.remove, {"row_id": row.id})
                else:
                    connection.execute(schema.hide, {"row_id": row.id, "now": now})
        if row is None:
            # Someone else took it: back to cheap polling.
            self._hot.discard(queue)
            raise Empty()
        # A backlog is likely: skip the read at the next poll.
        self._hot.add(queue)
        payload: dict[str, Any] = json.loads(row.payload)
        properties = payload.setdefault("properties", {})
        if row.timestamp is not None:
            properties.setdefault("delivery_info", {})["redelivered"] = True
        if not remove:
            self._hold(properties["delivery_tag"], int(row.id))
        return payload

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        if no_ack:
            self._no_ack_queues.add(queue)
        else:
            self._no_ack_queues.discard(queue)
        return super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)

    def basic_cancel(self, consumer_tag: str) -> Any:
        queue = self._tag_to_queue.get(consumer_tag)
        result = super().basic_cancel(consumer_tag)
        if queue is not None and queue not in self._active_queues:
            self._no_ack_queues.discard(queue)
        return result

    def basic_get(self, queue: str, no_ack: bool = False, **kwargs: Any) -> Any:
        try:
            raw = self._claim(queue, remove=no_ack)
        except Empty:
            return None
        message = self.Message(raw, channel=self)
        if not no_ack:
            self.qos.append(message, message.delivery_tag)
        return message

    # -- held rows: ack, reject, restore, heartbeat -----------------------------------------

    def _hold(self, delivery_tag: str, row_id: int) -> None:
        with self._held_lock:
            self._held[delivery_tag] = row_id
            heartbeat = self._heartbeat
            if heartbeat is None or not heartbeat.is_alive():
                heartbeat = self._heartbeat = _Heartbeat(self)
                heartbeat.start()

    def _release(self, delivery_tag: str) -> int | None:
        """Stop holding the message: its row id, or None if this channel does not hold it.

        In a forked child, the parent's channel is inherited but the rows stay the
        parent's: the child releases nothing.
        """
        if os.getpid() != self._pid:
            return None
        with self._held_lock:
            return self._held.pop(delivery_tag, None)

    def _forget(self, delivery_tag: str) -> None:
        """Delete the row of an acked or rejected message."""
        row_id = self._release(delivery_tag)
        if row_id is None:
            return
        try:
            self._delete_rows([row_id])
        except DBAPIError as exc:
            logger.warning("Could not delete acked message row %s (%s); will retry.", row_id, exc)
            with self._held_lock:
                self._undeleted.add(row_id)

    def _delete_rows(self, row_ids: list[int]) -> None:
        table = self._schema.message
        with _write(self._open()) as connection:
            connection.execute(delete(table).where(table.c.id.in_(row_ids)))

    def _restore(self, message: Any) -> None:
        """Make the original row visible again (requeue, or restore at shutdown)."""
        if os.getpid() != self._pid:
            return
        row_id = self._release(message.delivery_tag)
        if row_id is None:
            # Not one of our rows (e.g. a message built by hand): publish it again.
            super()._restore(message)
            return
        try:
            with _write(self._open()) as connection:
                connection.execute(self._schema.show, {"row_id": row_id})
        except DBAPIError as exc:
            # No longer heartbeated, the row comes back after the visibility timeout.
            logger.warning(
                "Could not requeue message row %s (%s); it will be redelivered after the"
                " visibility timeout (%s s).",
                row_id,
                exc,
                self.visibility_timeout,
            )

    def _beat(self) -> None:
        """Refresh the timestamp of every row held; retry failed deletes."""
        with self._held_lock:
            held = list(self._held.values())
            undeleted = list(self._undeleted)
        if undeleted:
            try:
                self._delete_rows(undeleted)
            except DBAPIError as exc:
                logger.warning("Could not delete acked message rows (%s); will retry.", exc)
                held.extend(undeleted)
            else:
                with self._held_lock:
                    self._undeleted.difference_update(undeleted)
        if not held:
            return
        table = self._schema.message
        now = _utcnow()
        with _write(self._open()) as connection:
            for start in range(0, len(held), _HEARTBEAT_CHUNK):
                chunk = held[start : start + _HEARTBEAT_CHUNK]
                connection.execute(
                    update(table)
                    .where(table.c.id.in_(chunk), table.c.visible == False)  # noqa: E712
                    .values(timestamp=now)
                )

    def close(self) -> None:
        # Kombu's close restores unacked messages first (through ``_restore``).
        super().close()
        heartbeat = self._heartbeat
        if heartbeat is not None and os.getpid() == self._pid:
            heartbeat.stop()
            with self._held_lock:
                undeleted = list(self._undeleted)
            if undeleted:
                try:
                    self._delete_rows(undeleted)
                except DBAPIError as exc:
                    logger.warning(
                        "Could not delete acked message rows %s (%s); they will be"
                        " redelivered after the visibility timeout.",
                        undeleted,
                        exc,
                    )


class _Heartbeat(threading.Thread):
    """Refreshes a channel's held rows every ``visibility_timeout / 4`` seconds.

    A thread of its own, with its own connections, so that it keeps beating while the
    main thread runs a task (solo pool).  It holds the channel weakly and ends with it.
    """

    def __init__(self, channel: Channel) -> None:
        super().__init__(name=f"flask-tasks-heartbeat-{id(channel):x}", daemon=True)
        self._channel = weakref.ref(channel)
        self._interval = max(channel.visibility_timeout / 4, 0.05)
        self._stopped = threading.Event()

    def stop(self) -> None:
        self._stopped.set()

    def run(self) -> None:
        while not self._stopped.wait(self._interval):
            channel = self._channel()
            if channel is None:
                return
            try:
                channel._beat()
            except Exception:
                logger.warning(
                    "Heartbeat of held messages failed; will retry in %.1f s.",
                    self._interval,
                    exc_info=True,
                )
            del channel


class Transport(_KombuTransport):  # type: ignore[misc]
    """Kombu's SQLAlchemy transport, made dependable; selected by ``tasksdb+<URL>``."""

    Channel = Channel
    polling_interval = DEFAULT_POLLING_INTERVAL
    connection_errors = (OperationalError, InterfaceError)


register()
