"""SQLAlchemy engines shared by the embedded transport and the SQL record store.

* **One engine per process** and configuration: every thread of a process shares it, and a
  forked child (a Celery prefork pool process) gets a fresh one on first use.  The parent's
  engines are kept, unused and never closed, in the child: closing a connection the parent
  still uses could, for SQLite, checkpoint or delete the write-ahead log under it.
* **SQLite** connections use WAL (switched on once per file, retried while other processes
  hold the file), ``synchronous=NORMAL`` and a busy timeout.  The driver is put in
  autocommit mode so that *we* say how a transaction starts: :func:`write` opens one with
  ``BEGIN IMMEDIATE`` (the write lock, waiting up to the busy timeout), :func:`read` opens
  none, so each statement is its own transaction and a plain read takes no lock.
"""

from __future__ import annotations

import datetime
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError

__all__ = [
    "BEGIN",
    "DEFAULT_BUSY_TIMEOUT",
    "dispose_engines",
    "get_engine",
    "is_busy",
    "is_memory_sqlite",
    "read",
    "utcnow",
    "write",
]

DEFAULT_BUSY_TIMEOUT = 5000
"""Milliseconds an SQLite connection waits for a lock before failing."""

BEGIN = "flask_tasks_begin"
"""Execution option read by the SQLite ``begin`` listener: how to open a transaction
(``"IMMEDIATE"`` by default, ``None`` for no ``BEGIN`` at all)."""

# SQLite result codes (low byte of the extended code) that mean "someone else holds a lock".
_SQLITE_BUSY = {5, 6}

_LOCK = threading.RLock()
# (pid, url, busy_timeout, engine options as JSON) -> engine of this process.
_ENGINES: dict[tuple[int, str, int, str], Engine] = {}
# Engines inherited from a parent process: never used, never closed.
_INHERITED: list[Engine] = []


def _after_fork_in_child() -> None:
    global _LOCK
    _LOCK = threading.RLock()
    _INHERITED.extend(_ENGINES.values())
    _ENGINES.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def get_engine(
    url: str,
    *,
    busy_timeout: int = DEFAULT_BUSY_TIMEOUT,
    options: Mapping[str, Any] | None = None,
) -> Engine:
    """This process's engine for ``url`` created with ``options``, made on first use.

    Callers that pass the same URL, busy timeout and options share one engine (and one
    pool of connections).  SQLite engines are configured as the module docstring says.
    """
    options = dict(options or {})
    key = (os.getpid(), url, busy_timeout, json.dumps(options, sort_keys=True, default=repr))
    engine = _ENGINES.get(key)
    if engine is not None:
        return engine
    with _LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            engine = create_engine(url, **options)
            if engine.dialect.name == "sqlite":
                _configure_sqlite(engine, busy_timeout)
            _ENGINES[key] = engine
        return engine


def dispose_engines() -> None:
    """Close the pooled connections of every engine this process created here.

    For tests and shutdown hooks; the engines reconnect when used again.
    """
    with _LOCK:
        engines = [e for (pid, *_), e in _ENGINES.items() if pid == os.getpid()]
    for engine in engines:
        engine.dispose()


def is_memory_sqlite(url: str) -> bool:
    """Whether ``url`` names an in-memory SQLite database (which other processes cannot see)."""
    parsed = make_url(url)
    return parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:")


def _enable_wal(cursor: Any, busy_timeout: int) -> None:
    """Switch the file to WAL once; retry while other processes hold it.

    WAL is a property of the file, so only the first connection changes it. That change
    needs an exclusive lock, and SQLite may refuse it at once (``database is locked``)
    instead of calling the busy handler, when many processes open a fresh file together.
    """
    deadline = time.monotonic() + max(busy_timeout, 1000) / 1000
    delay = 0.005
    while True:
        try:
            mode = cursor.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _configure_sqlite(engine: Engine, busy_timeout: int) -> None:
    """Set the pragmas on every new connection and let us issue ``BEGIN`` ourselves.

    The driver's own transaction handling would start a transaction lazily at the first
    write, which under concurrency fails with "database is locked" without waiting.  With
    the driver in autocommit mode, a transaction starts with ``BEGIN IMMEDIATE`` (the write
    lock, waiting up to ``busy_timeout``), or not at all (see :func:`read`).
    """

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout)}")
            _enable_wal(cursor, busy_timeout)
            cursor.execute("PRAGMA synchronous = NORMAL")
        finally:
            cursor.close()

    def on_begin(connection: Connection) -> None:
        mode = connection.get_execution_options().get(BEGIN, "IMMEDIATE")
        if mode:
            connection.exec_driver_sql(f"BEGIN {mode}")

    event.listen(engine, "connect", on_connect)
    event.listen(engine, "begin", on_begin)


@contextmanager
def write(engine: Engine) -> Iterator[Connection]:
    """A transaction, committed at the end; on SQLite it holds the write lock from its start."""
    with engine.connect() as connection, connection.begin():
        yield connection


@contextmanager
def read(engine: Engine) -> Iterator[Connection]:
    """A connection with no explicit transaction on SQLite: each statement commits on its
    own, and a plain read takes no lock.  Elsewhere, an ordinary connection."""
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.execution_options(**{BEGIN: None})
        yield connection


def utcnow() -> datetime.datetime:
    """The current UTC time as a naive ``datetime`` (how the tables store times)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def is_busy(exc: DBAPIError) -> bool:
    """Whether an SQLite error means the database stayed locked for the whole busy timeout."""
    code = getattr(exc.orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in _SQLITE_BUSY
    return "database is locked" in str(exc.orig)
