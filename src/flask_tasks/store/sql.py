"""The SQL record store: task records in a table of an SQLite, PostgreSQL or MySQL/MariaDB
database, through SQLAlchemy Core.

Tables (``<prefix>`` is ``flask_tasks`` unless told otherwise):

``<prefix>_record``, one row per task:
    ``id`` (primary key, up to 155 characters like Celery's), ``name``, ``state``,
    ``owner``, ``queue``, ``attempt``, ``submitted_at``, ``started_at``, ``finished_at``,
    ``updated_at``, ``expires_at``, ``cancel_requested``, ``progress`` (JSON text),
    ``celery_state`` and ``meta`` (Celery's encoded result meta; a record's ``result``,
    ``error`` and custom ``meta`` are read out of it, so nothing is stored twice).
    Indexes ``(owner, submitted_at, id)``, ``(state, submitted_at, id)``,
    ``(owner, state, submitted_at, id)``, ``(submitted_at, id)``,
    ``(name, submitted_at, id)`` and ``(expires_at)``: a page of :meth:`SQLStore.list`
    reads O(limit) rows, newest first.
``<prefix>_group``, Celery's group results (for groups and chords):
    ``group_id``, ``meta``, ``expires_at``.

Times are naive UTC in the tables (``DATETIME(6)`` on MySQL) and aware UTC in Python.
On MySQL/MariaDB, text columns use the binary ``utf8mb4_bin`` collation, so owners and ids
compare case-sensitively.

Each write is one statement guarded by ``state NOT IN (final states)``, so the store's
rules hold whatever runs concurrently. PostgreSQL and MySQL connections run in autocommit
mode, so one statement is one round trip (no BEGIN, COMMIT or ROLLBACK). Round trips:

==============================================  ==========  ==============  ============
call                                            PostgreSQL  SQLite >= 3.35  MySQL/MariaDB
==============================================  ==========  ==============  ============
create, get, get_meta, list, cancel_requested   1           1               1
mark_running, save (record there, not final)    1           1               1
write_progress (not flagged / flagged)          1 / 1       1 / 1           1 / 3
request_cancel (queued / running)               1 / 1       1 / 1           1 / 2
mark_running, save: record missing              2           2               2
mark_running, save: record final (skipped)      3           3               4
==============================================  ==========  ==============  ============

(SQLite is in-process: a "round trip" there is a statement.) SQLite connections are
configured like the embedded transport's; the two share one engine per file and process.

Expired rows are invisible to reads at once and deleted in bounded batches: by
:meth:`SQLStore.prune`, and by some write at most once a minute per process.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import inspect
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    bindparam,
    case,
    delete,
    false,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.types import TypeDecorator, TypeEngine

from flask_tasks import _engines
from flask_tasks.state import FINISHED, Progress, TaskRecord, TaskState, state_from_celery

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

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "NETWORK_TIMEOUT",
    "PRUNE_BATCH",
    "PRUNE_INTERVAL",
    "SQLStore",
]

logger = logging.getLogger(__name__)

DEFAULT_CONNECT_TIMEOUT = 3
"""Seconds to wait for a PostgreSQL or MySQL server to accept a connection."""

NETWORK_TIMEOUT = 30
"""Seconds after which a connected server that stopped answering is given up on: MySQL's
read and write timeouts, PostgreSQL's ``tcp_user_timeout`` (unacknowledged data only, so
a slow query is not cut short)."""

PRUNE_INTERVAL = 60.0
"""Seconds between two opportunistic prunes in one process."""

PRUNE_BATCH = 1000
"""Rows deleted by one pruning statement."""

MAX_ID_LENGTH = 155
MAX_TEXT_LENGTH = 255

_T = TypeVar("_T")
_monotonic = time.monotonic  # the clock of opportunistic pruning (tests move it)
_UTC = datetime.timezone.utc
_FINAL = sorted(state.value for state in FINISHED)
_PREFIX = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,39}")
_DIALECTS = {"sqlite": "sqlite", "postgresql": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
_CREATE_ATTEMPTS = 5
_MYSQL_DUPLICATE_KEY = 1062
# SQLAlchemy >= 2.0.43 can skip the DBAPI rollback() of autocommit connections (PyMySQL
# would send a ROLLBACK, one more round trip, every time a connection goes back to the pool).
_SKIP_ROLLBACK = "skip_autocommit_rollback" in inspect.signature(DefaultDialect).parameters


# -- schema ---------------------------------------------------------------------------------


class _UTCDateTime(TypeDecorator[datetime.datetime]):
    """Aware UTC ``datetime`` in Python, naive UTC in the database (microseconds kept)."""

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name in ("mysql", "mariadb"):
            return dialect.type_descriptor(mysql.DATETIME(fsp=6))
        return dialect.type_descriptor(DateTime())

    def process_bind_param(
        self, value: datetime.datetime | None, dialect: Dialect
    ) -> datetime.datetime | None:
        return None if value is None else _naive(value)

    def process_result_value(
        self, value: Any | None, dialect: Dialect
    ) -> datetime.datetime | None:
        return None if value is None else value.replace(tzinfo=_UTC)


def _naive(value: datetime.datetime) -> datetime.datetime:
    """``value`` in UTC, without a time zone (a naive value is taken to be UTC already)."""
    if value.tzinfo is not None:
        value = value.astimezone(_UTC).replace(tzinfo=None)
    return value


def _string(length: int) -> TypeEngine[str]:
    """A VARCHAR compared byte for byte on MySQL (whose default collation ignores case)."""
    return String(length).with_variant(
        mysql.VARCHAR(length, charset="utf8mb4", collation="utf8mb4_bin"), "mysql", "mariadb"
    )


def _long_text() -> TypeEngine[str]:
    """Text of any size (MySQL's TEXT stops at 64 KiB, too little for some results)."""
    return Text().with_variant(mysql.LONGTEXT(charset="utf8mb4"), "mysql", "mariadb")


def _tables(prefix: str) -> tuple[MetaData, Table, Table]:
    metadata = MetaData()
    record = Table(
        f"{prefix}_record",
        metadata,
        Column("id", _string(MAX_ID_LENGTH), primary_key=True),
        Column("name", _string(MAX_TEXT_LENGTH), nullable=False),
        Column("state", _string(16), nullable=False),
        Column("owner", _string(MAX_TEXT_LENGTH)),
        Column("queue", _string(MAX_TEXT_LENGTH)),
        Column("attempt", Integer, nullable=False),
        Column("submitted_at", _UTCDateTime(), nullable=False),
        Column("started_at", _UTCDateTime()),
        Column("finished_at", _UTCDateTime()),
        Column("updated_at", _UTCDateTime(), nullable=False),
        Column("expires_at", _UTCDateTime(), nullable=False),
        Column("cancel_requested", Boolean(create_constraint=False), nullable=False),
        Column("progress", Text),
        Column("celery_state", _string(50)),
        Column("meta", _long_text()),
        Index(f"ix_{prefix}_record_owner", "owner", "submitted_at", "id"),
        Index(f"ix_{prefix}_record_state", "state", "submitted_at", "id"),
        Index(f"ix_{prefix}_record_owner_state", "owner", "state", "submitted_at", "id"),
        Index(f"ix_{prefix}_record_submitted", "submitted_at", "id"),
        Index(f"ix_{prefix}_record_name", "name", "submitted_at", "id"),
        Index(f"ix_{prefix}_record_expires", "expires_at"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    group = Table(
        f"{prefix}_group",
        metadata,
        Column("group_id", _string(MAX_ID_LENGTH), primary_key=True),
        Column("meta", _long_text(), nullable=False),
        Column("expires_at", _UTCDateTime(), nullable=False),
        Index(f"ix_{prefix}_group_expires", "expires_at"),
        mysql_engine="InnoDB",
        mysql_charset="utf8mb4",
    )
    return metadata, record, group


class _Statements:
    """The statements a store runs, built once (with bound parameters named ``p_*``)."""

    def __init__(self, record: Table, group: Table, dialect: str, returning: bool) -> None:
        c = record.c
        when = bindparam("p_now", type_=_UTCDateTime())
        expires = bindparam("p_expires", type_=_UTCDateTime())
        task_id = c.id == bindparam("p_id")
        live = c.expires_at > when
        not_final = c.state.not_in(_FINAL)
        queued = c.state == TaskState.QUEUED.value

        self.get = select(*record.c).where(task_id, live)
        self.get_meta = select(c.celery_state, c.meta).where(
            task_id, live, c.celery_state.is_not(None), c.meta.is_not(None)
        )
        self.flag = select(c.cancel_requested).where(task_id, live)
        self.state_flag = select(c.state, c.cancel_requested).where(task_id)
        self.state = select(c.state).where(task_id, live)
        self.delete = delete(record).where(task_id)
        self.delete_expired = delete(record).where(task_id, c.expires_at <= when)

        progress = (
            update(record)
            .where(task_id, not_final)
            .values(progress=bindparam("p_progress", type_=Text()), updated_at=when)
        )
        # With RETURNING, the cancel flag comes back with the write. Without, the common
        # case (no flag) is still one statement: the write is guarded by "no flag".
        self.progress = (
            progress.returning(c.cancel_requested)
            if returning
            else progress.where(c.cancel_requested == false())
        )
        self.progress_any = progress

        self.touch_running = (
            update(record)
            .where(
                c.id.in_(bindparam("p_ids", expanding=True)),
                c.state == TaskState.RUNNING.value,
            )
            .values(updated_at=when)
        )
        self.running = (
            update(record)
            .where(task_id, not_final)
            .values(
                state=TaskState.RUNNING.value,
                attempt=bindparam("p_attempt", type_=Integer()),
                started_at=func.coalesce(
                    c.started_at, bindparam("p_started", type_=_UTCDateTime())
                ),
                queue=func.coalesce(c.queue, bindparam("p_queue", type_=_string(255))),
                updated_at=when,
                expires_at=expires,
            )
        )
        save = (
            update(record)
            .where(task_id, not_final)
            .values(
                state=bindparam("p_state", type_=String()),
                celery_state=bindparam("p_celery_state", type_=String()),
                meta=bindparam("p_meta", type_=Text()),
                attempt=func.coalesce(bindparam("p_attempt", type_=Integer()), c.attempt),
                started_at=func.coalesce(
                    c.started_at, bindparam("p_started", type_=_UTCDateTime())
                ),
                finished_at=bindparam("p_finished", type_=_UTCDateTime()),
                updated_at=when,
                expires_at=expires,
            )
        )
        self.save = save
        self.save_progress = save.values(progress=bindparam("p_progress", type_=Text()))

        revoked = bindparam("p_meta", type_=Text())
        if returning:
            # One statement for both cases. MySQL evaluates SET from left to right on the
            # updated row, so ``state`` comes last everywhere (the others read the old one).
            self.cancel = (
                update(record)
                .where(task_id, not_final, live)
                .ordered_values(
                    (c.cancel_requested, true()),
                    (c.finished_at, case((queued, when), else_=c.finished_at)),
                    (c.expires_at, case((queued, expires), else_=c.expires_at)),
                    (c.celery_state, case((queued, "REVOKED"), else_=c.celery_state)),
                    (c.meta, case((queued, revoked), else_=c.meta)),
                    (c.updated_at, when),
                    (c.state, case((queued, TaskState.CANCELLED.value), else_=c.state)),
                )
                .returning(c.state)
            )
        self.cancel_queued = (
            update(record)
            .where(task_id, queued, live)
            .values(
                state=TaskState.CANCELLED.value,
                cancel_requested=true(),
                finished_at=when,
                expires_at=expires,
                celery_state="REVOKED",
                meta=revoked,
                updated_at=when,
            )
        )
        self.flag_running = (
            update(record)
            .where(task_id, not_final, live)
            .values(cancel_requested=true(), updated_at=when)
        )

        # Inserting a record: a row that expired (but was not pruned yet) is replaced.
        self.upsert: Any = None
        self.insert = insert(record)
        if dialect in ("postgresql", "sqlite"):
            dml = postgresql if dialect == "postgresql" else sqlite
            ins = dml.insert(record)
            # SQLAlchemy closes an INSERT's cursor before its rowcount is read, unless told.
            self.upsert = ins.on_conflict_do_update(
                index_elements=[c.id],
                set_={col.name: ins.excluded[col.name] for col in record.c if col is not c.id},
                where=c.expires_at <= when,
            ).execution_options(preserve_rowcount=True)

        g = group.c
        group_id = g.group_id == bindparam("p_id")
        self.get_group = select(g.meta).where(group_id, g.expires_at > when)
        self.delete_group = delete(group).where(group_id)
        if dialect in ("postgresql", "sqlite"):
            dml = postgresql if dialect == "postgresql" else sqlite
            gins = dml.insert(group)
            self.save_group: Any = gins.on_conflict_do_update(
                index_elements=[g.group_id],
                set_={"meta": gins.excluded.meta, "expires_at": gins.excluded.expires_at},
            )
        else:
            mins = mysql.insert(group)
            self.save_group = mins.on_duplicate_key_update(
                meta=mins.inserted.meta, expires_at=mins.inserted.expires_at
            )


# -- cursors --------------------------------------------------------------------------------


def _encode_cursor(submitted_at: datetime.datetime, task_id: str) -> str:
    at = _naive(submitted_at).replace(tzinfo=_UTC)
    micros = (at - _EPOCH) // datetime.timedelta(microseconds=1)
    raw = json.dumps([micros, task_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _decode_cursor(cursor: str) -> tuple[datetime.datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        micros, task_id = json.loads(raw)
        if not isinstance(micros, int) or not isinstance(task_id, str):
            raise TypeError(cursor)
        return _EPOCH + datetime.timedelta(microseconds=micros), task_id
    except (ValueError, TypeError, binascii.Error, OverflowError):
        raise ValueError(
            f"{cursor!r} is not a cursor of this store; pass the next_cursor of a page"
        ) from None


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=_UTC)


# -- the store ------------------------------------------------------------------------------


class SQLStore(RecordStore):
    """Task records in an SQL database: SQLite, PostgreSQL (psycopg 3) or MySQL/MariaDB.

    ``url`` is an SQLAlchemy URL (``sqlite:////srv/app/instance/tasks.sqlite3``,
    ``postgresql+psycopg://user@host/db``, ``mysql+pymysql://user@host/db``); the tables
    are created on first use. ``busy_timeout`` (milliseconds) is SQLite's wait for a lock;
    ``connect_timeout`` (seconds) bounds the wait for a PostgreSQL or MySQL server; extra
    ``engine_options`` go to :func:`sqlalchemy.create_engine`. Expired rows are deleted
    by some write at most every ``prune_interval`` seconds per process.

    Thread-safe; one engine per URL and process is shared by all threads (SQLite's with the
    embedded transport), and a forked child makes its own.
    """

    def __init__(
        self,
        url: str,
        *,
        retention: datetime.timedelta = DEFAULT_RETENTION,
        prefix: str = DEFAULT_PREFIX,
        busy_timeout: int = _engines.DEFAULT_BUSY_TIMEOUT,
        connect_timeout: int = DEFAULT_CONNECT_TIMEOUT,
        engine_options: dict[str, Any] | None = None,
        prune_interval: float = PRUNE_INTERVAL,
    ) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ValueError(f"{url!r} is not an SQLAlchemy database URL: {exc}") from None
        dialect = _DIALECTS.get(parsed.get_backend_name())
        if dialect is None:
            raise ValueError(
                f"The SQL record store works on SQLite, PostgreSQL and MySQL/MariaDB, not"
                f" {parsed.get_backend_name()!r}; use e.g. postgresql+psycopg://... or a"
                " redis:// URL."
            )
        if _engines.is_memory_sqlite(url):
            raise ValueError(
                f"{url!r} is an in-memory SQLite database, which other processes and threads"
                " cannot see; use a file: sqlite:////absolute/path/tasks.sqlite3"
            )
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(
                f"prefix={prefix!r} must be a name of letters, digits and underscores (at most"
                " 40), e.g. 'flask_tasks'; it names the tables."
            )
        if retention <= datetime.timedelta(0):
            raise ValueError(f"retention={retention!r} must be a positive duration.")
        self.url = url
        self.retention = retention
        self.prefix = prefix
        self.prune_interval = prune_interval
        self._dialect = dialect
        self._where = parsed.render_as_string(hide_password=True)
        self._password = parsed.password
        self._busy_timeout = int(busy_timeout)
        self._options = _engine_options(dialect, connect_timeout, engine_options or {})
        self._metadata, self._record, self._group = _tables(prefix)
        # Creating the engine does not connect; a missing driver is reported here.
        engine = self._get_engine()
        self._returning = bool(engine.dialect.update_returning)
        self._sql = _Statements(self._record, self._group, dialect, self._returning)
        self._opened: tuple[int, Engine] | None = None
        self._pid = os.getpid()
        self._open_lock = threading.Lock()
        self._prune_lock = threading.Lock()
        self._next_prune = 0.0
        self._listings: dict[tuple[bool, ...], Any] = {}

    def __repr__(self) -> str:
        return f"<SQLStore {self._where} prefix={self.prefix!r}>"

    # -- the sender ------------------------------------------------------------------------

    def create(self, record: TaskRecord) -> None:
        """Insert ``record`` unless a live record has its id (an expired one is replaced)."""
        _check(record.id, name=record.name, owner=record.owner, queue=record.queue)
        now = _engines.utcnow()
        row = _row(
            record.id,
            name=record.name,
            state=record.state,
            owner=record.owner,
            queue=record.queue,
            attempt=record.attempt,
            submitted_at=record.submitted_at,
            started_at=record.started_at,
            finished_at=record.finished_at,
            updated_at=record.updated_at,
            expires_at=now + self.retention,
            cancel_requested=record.cancel_requested,
            progress=_dump_progress(record.progress),
            celery_state=record.celery_state,
        )
        self._run(f"create the record of task {record.id}", lambda c: self._insert(c, row, now))
        self._maybe_prune()

    def delete(self, task_id: str) -> None:
        """Remove a record (a publish that failed, ``forget``)."""
        self._run(
            f"delete the record of task {task_id}",
            lambda c: c.execute(self._sql.delete, {"p_id": task_id}),
        )

    # -- the worker ------------------------------------------------------------------------

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
        """Move a record to ``running`` unless it is final; create it when missing."""
        _check(task_id, name=name, owner=owner, queue=queue)
        now = _engines.utcnow()
        expires = now + self.retention
        params = {
            "p_id": task_id,
            "p_attempt": attempt,
            "p_started": started_at,
            "p_queue": queue,
            "p_now": now,
            "p_expires": expires,
        }
        row = _row(
            task_id,
            name=name,
            state=TaskState.RUNNING,
            owner=owner,
            queue=queue,
            attempt=attempt,
            submitted_at=started_at,
            started_at=started_at,
            updated_at=now,
            expires_at=expires,
        )
        started = self._run(
            f"mark task {task_id} running",
            lambda c: self._update_or_insert(c, self._sql.running, params, row, now),
        )
        self._maybe_prune()
        return StartDecision.RUN if started else StartDecision.SKIP

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
        """Store Celery's meta and the state it means, unless the record is final."""
        _check(task_id, name=name)
        state = state_from_celery(celery_state)
        now = _engines.utcnow()
        expires = now + self.retention
        running = state is TaskState.RUNNING
        finished = now if state.finished else None
        params: dict[str, Any] = {
            "p_id": task_id,
            "p_state": state.value,
            "p_celery_state": celery_state,
            "p_meta": meta,
            "p_attempt": attempt,
            "p_started": now if running else None,
            "p_finished": finished,
            "p_now": now,
            "p_expires": expires,
        }
        statement = self._sql.save
        encoded = _dump_progress(progress)
        if encoded is not None or (
            # A custom state whose meta holds progress: that progress is the newest, and it
            # is read out of the meta, so the stored one goes.
            running
            and celery_state != "STARTED"
            and fields_from_meta(celery_state, meta).get("progress") is not None
        ):
            statement = self._sql.save_progress
            params["p_progress"] = encoded
        row = _row(
            task_id,
            name=name or "",
            state=state,
            attempt=attempt or 0,
            submitted_at=now,
            started_at=now if running else None,
            finished_at=finished,
            updated_at=now,
            expires_at=expires,
            progress=encoded,
            celery_state=celery_state,
            meta=meta,
        )
        saved = self._run(
            f"save state {celery_state} of task {task_id}",
            lambda c: self._update_or_insert(c, statement, params, row, now),
        )
        self._maybe_prune()
        return saved

    def write_progress(self, task_id: str, progress: Progress) -> bool:
        """Store the progress of a running task and return its cancel flag.

        One statement where ``UPDATE ... RETURNING`` exists (PostgreSQL, SQLite >= 3.35).
        On MySQL/MariaDB, the write is guarded by "no cancel flag", so the usual case is
        one statement too; otherwise the state and flag are read, and a flagged running
        task's progress is written by a third statement.
        """
        params: dict[str, Any] = {"p_id": task_id, "p_progress": _dump_progress(progress)}

        def work(connection: Connection) -> bool:
            params["p_now"] = _engines.utcnow()
            if self._returning:
                row = connection.execute(self._sql.progress, params).first()
                if row is not None:
                    return bool(row[0])
            elif connection.execute(self._sql.progress, params).rowcount > 0:
                return False
            # Final, missing, or (without RETURNING) flagged: the flag, all the same.
            found = connection.execute(self._sql.state_flag, params).first()
            if found is None:
                return False
            if not self._returning and not TaskState(found[0]).finished:
                connection.execute(self._sql.progress_any, params)
            return bool(found[1])

        return self._run(f"write the progress of task {task_id}", work)

    def touch_running(self, task_ids: Collection[str]) -> None:
        """Refresh ``updated_at`` of the running ones among ``task_ids`` (one statement)."""
        if not task_ids:
            return
        params = {"p_ids": list(task_ids), "p_now": _engines.utcnow()}
        self._run(
            "refresh the heartbeat of running tasks",
            lambda c: c.execute(self._sql.touch_running, params),
        )

    # -- anyone ----------------------------------------------------------------------------

    def request_cancel(self, task_id: str) -> CancelOutcome:
        """Cancel a queued task at once, or set a running task's cancel flag; atomically.

        A queued record becomes ``cancelled`` with Celery's ``REVOKED`` meta, so
        ``AsyncResult.get()`` raises ``TaskRevokedError`` rather than waiting forever.
        """
        now = _engines.utcnow()
        params = {
            "p_id": task_id,
            "p_now": now,
            "p_expires": now + self.retention,
            "p_meta": _revoked_meta(task_id, now),
        }

        def work(connection: Connection) -> CancelOutcome:
            for _ in range(3):
                if self._returning:
                    row = connection.execute(self._sql.cancel, params).first()
                    if row is not None:
                        if row[0] == TaskState.CANCELLED.value:
                            return CancelOutcome.CANCELLED
                        return CancelOutcome.REQUESTED
                else:
                    if connection.execute(self._sql.cancel_queued, params).rowcount > 0:
                        return CancelOutcome.CANCELLED
                    if connection.execute(self._sql.flag_running, params).rowcount > 0:
                        return CancelOutcome.REQUESTED
                state = connection.execute(self._sql.state, params).scalar()
                if state is None:
                    return CancelOutcome.NOT_FOUND
                if TaskState(state).finished:
                    return CancelOutcome.FINISHED
                # Created or started between the two statements: once more.
            raise StoreError(f"The record of task {task_id} kept changing; try again.")

        return self._run(f"cancel task {task_id}", work)

    def cancel_requested(self, task_id: str) -> bool:
        """The cancel flag of a live record (False when there is none)."""
        params = {"p_id": task_id, "p_now": _engines.utcnow()}
        flag = self._run(
            f"read the cancel flag of task {task_id}",
            lambda c: c.execute(self._sql.flag, params).scalar(),
        )
        return bool(flag)

    def get(self, task_id: str) -> TaskRecord | None:
        """The whole record, or None when the id is unknown or expired."""
        params = {"p_id": task_id, "p_now": _engines.utcnow()}
        row = self._run(
            f"read the record of task {task_id}",
            lambda c: c.execute(self._sql.get, params).first(),
        )
        return None if row is None else _to_record(row)

    def get_meta(self, task_id: str) -> tuple[str, str] | None:
        """Celery's ``(state, meta JSON)`` of a live record that has them, or None."""
        params = {"p_id": task_id, "p_now": _engines.utcnow()}
        row = self._run(
            f"read the result of task {task_id}",
            lambda c: c.execute(self._sql.get_meta, params).first(),
        )
        return None if row is None else (str(row[0]), str(row[1]))

    def list(
        self,
        *,
        owner: str | None = None,
        state: TaskState | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Live records newest first, ``limit`` at a time: one ``SELECT ... LIMIT``."""
        if limit < 1:
            raise ValueError(f"limit={limit!r} must be at least 1.")
        params: dict[str, Any] = {"p_now": _engines.utcnow(), "p_limit": limit + 1}
        if owner is not None:
            params["p_owner"] = owner
        if state is not None:
            params["p_state"] = TaskState(state).value
        if name is not None:
            params["p_name"] = name
        if cursor is not None:
            params["p_at"], params["p_last"] = _decode_cursor(cursor)
        statement = self._listing(
            owner is not None, state is not None, name is not None, cursor is not None
        )
        rows = self._run("list task records", lambda c: c.execute(statement, params).all())
        records = [_to_record(row) for row in rows[:limit]]
        next_cursor = None
        if len(rows) > limit:
            last = records[-1]
            next_cursor = _encode_cursor(last.submitted_at, last.id)
        return Page(records=records, next_cursor=next_cursor)

    def counts(self, *, owner: str | None = None) -> dict[TaskState, int]:
        """How many live records there are in each state."""
        c = self._record.c
        statement = select(c.state, func.count()).where(c.expires_at > _engines.utcnow())
        if owner is not None:
            statement = statement.where(c.owner == owner)
        statement = statement.group_by(c.state)
        rows = self._run("count task records", lambda conn: conn.execute(statement).all())
        counts = dict.fromkeys(TaskState, 0)
        for state, count in rows:
            counts[TaskState(state)] = int(count)
        return counts

    def purge(self, *, finished_before: datetime.datetime | None = None) -> int:
        """Delete finished records (that finished before the given time), in batches."""
        c = self._record.c
        conditions: list[Any] = [c.state.in_(_FINAL)]
        if finished_before is not None:
            conditions.append(c.finished_at < _naive(finished_before))
        return self._run(
            "purge finished task records",
            lambda conn: _delete_all(conn, self._record, c.id, conditions),
        )

    def prune(self) -> int:
        """Delete the records and groups that outlived ``retention``; return how many
        records went."""
        now = _engines.utcnow()

        def work(connection: Connection) -> int:
            r, g = self._record, self._group
            _delete_all(connection, g, g.c.group_id, [g.c.expires_at < now])
            return _delete_all(connection, r, r.c.id, [r.c.expires_at < now])

        return self._run("prune expired task records", work)

    def drop(self) -> None:
        """Drop this store's tables."""

        def work(engine: Engine) -> None:
            with self._transaction(engine) as connection:
                self._metadata.drop_all(connection, checkfirst=True)

        try:
            work(self._get_engine())
        except SQLAlchemyError as exc:
            raise self._error("drop the tables", exc) from exc
        self._opened = None

    def close(self) -> None:
        """Close this process's pooled connections to the database (they reopen if used).

        Other users of the same engine (the embedded transport on the same SQLite file)
        reconnect too; a parent's connections inherited by a forked child stay untouched.
        """
        self._get_engine().dispose()

    # -- groups (for the result backend) ---------------------------------------------------

    def save_group(self, group_id: str, meta: str) -> None:
        """Store (or replace) Celery's encoded meta of a group result."""
        _check(group_id)
        params = {
            "group_id": group_id,
            "meta": meta,
            "expires_at": _engines.utcnow() + self.retention,
        }
        self._run(f"save group {group_id}", lambda c: c.execute(self._sql.save_group, params))

    def get_group(self, group_id: str) -> str | None:
        """The encoded meta of a live group result, or None."""
        params = {"p_id": group_id, "p_now": _engines.utcnow()}
        meta = self._run(
            f"read group {group_id}", lambda c: c.execute(self._sql.get_group, params).scalar()
        )
        return None if meta is None else str(meta)

    def delete_group(self, group_id: str) -> None:
        """Forget a group result."""
        self._run(
            f"delete group {group_id}",
            lambda c: c.execute(self._sql.delete_group, {"p_id": group_id}),
        )

    # -- internals -------------------------------------------------------------------------

    def _listing(self, owner: bool, state: bool, name: bool, cursor: bool) -> Any:
        """The SELECT of a page with these filters (built once per combination)."""
        key = (owner, state, name, cursor)
        statement = self._listings.get(key)
        if statement is not None:
            return statement
        c = self._record.c
        conditions = [c.expires_at > bindparam("p_now", type_=_UTCDateTime())]
        if owner:
            conditions.append(c.owner == bindparam("p_owner"))
        if state:
            conditions.append(c.state == bindparam("p_state"))
        if name:
            conditions.append(c.name == bindparam("p_name"))
        if cursor:
            at = bindparam("p_at", type_=_UTCDateTime())
            last = bindparam("p_last", type_=String())
            # (submitted_at, id) < (at, last), written so that every database uses the
            # index for the range; the second condition only drops rows of the same time.
            conditions.append(c.submitted_at <= at)
            conditions.append(or_(c.submitted_at < at, c.id < last))
        statement = (
            select(*self._record.c)
            .where(*conditions)
            .order_by(c.submitted_at.desc(), c.id.desc())
            .limit(bindparam("p_limit", type_=Integer()))
        )
        if self._dialect == "mysql":
            # MariaDB may otherwise read the index of a filter by its first column only,
            # backwards from the newest row, and drop every row before the cursor: a page
            # deep in a long list then reads O(offset) rows instead of O(limit).
            hint = f"FORCE INDEX (ix_{self.prefix}_record_{_index_for(owner, state, name)})"
            statement = statement.with_hint(self._record, hint, "mysql").with_hint(
                self._record, hint, "mariadb"
            )
        self._listings[key] = statement
        return statement

    def _get_engine(self) -> Engine:
        return _engines.get_engine(
            self.url, busy_timeout=self._busy_timeout, options=self._options
        )

    def _engine(self) -> Engine:
        """This process's engine, with the tables created."""
        pid = os.getpid()
        opened = self._opened
        if opened is not None and opened[0] == pid:
            return opened[1]
        if self._pid != pid:
            # A forked child: the parent's locks may have been held by another thread.
            self._pid = pid
            self._open_lock = threading.Lock()
            self._prune_lock = threading.Lock()
        with self._open_lock:
            opened = self._opened
            if opened is not None and opened[0] == pid:
                return opened[1]
            engine = self._get_engine()
            self._prepare(engine)
            self._opened = (pid, engine)
            return engine

    def _prepare(self, engine: Engine) -> None:
        """Create the tables unless they exist, safely when many processes start at once."""
        for attempt in range(_CREATE_ATTEMPTS):
            try:
                with self._transaction(engine) as connection:
                    self._metadata.create_all(connection, checkfirst=True)
                return
            except DBAPIError as exc:
                # Another process created them between our check and our CREATE, or held
                # the lock for too long: check again. (Not when the server is unreachable:
                # an error without a statement is one of connecting.)
                if exc.statement is None or attempt == _CREATE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))

    @contextmanager
    def _transaction(self, engine: Engine) -> Iterator[Connection]:
        """Several statements, atomically (tables); every other call is one statement."""
        if self._dialect == "sqlite":
            with _engines.write(engine) as connection:  # BEGIN IMMEDIATE
                yield connection
            return
        # The engine is in autocommit mode: open the transaction by hand.
        with engine.connect() as connection:
            connection.exec_driver_sql("BEGIN")
            try:
                yield connection
            except BaseException:
                try:
                    connection.exec_driver_sql("ROLLBACK")
                except Exception:
                    connection.invalidate()
                raise
            connection.exec_driver_sql("COMMIT")

    def _run(self, what: str, work: Callable[[Connection], _T]) -> _T:
        """Run ``work`` on a connection where each statement commits on its own.

        A connection the server closed (restart, failover) is retried once on a new one;
        any other database error becomes a :class:`StoreError`.
        """
        for attempt in range(2):
            try:
                with _engines.read(self._engine()) as connection:
                    return work(connection)
            except DBAPIError as exc:
                if attempt == 0 and exc.connection_invalidated:
                    continue
                raise self._error(what, exc) from exc
            except SQLAlchemyError as exc:
                raise self._error(what, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    def _error(self, what: str, exc: SQLAlchemyError) -> StoreError:
        cause: Any = getattr(exc, "orig", None) or exc
        detail = " ".join(str(cause).split()) or type(cause).__name__
        if self._password:
            detail = detail.replace(self._password, "***")
        return StoreError(
            f"Could not {what} in the SQL store at {self._where}: {type(cause).__name__}: {detail}"
        )

    def _update_or_insert(
        self,
        connection: Connection,
        statement: Any,
        params: dict[str, Any],
        row: dict[str, Any],
        now: datetime.datetime,
    ) -> bool:
        """Run the guarded UPDATE; when it matched nothing, insert the record; when that
        found a record after all (created meanwhile), run the UPDATE again."""
        if connection.execute(statement, params).rowcount > 0:
            return True
        if self._insert(connection, row, now):
            return True
        return connection.execute(statement, params).rowcount > 0

    def _insert(self, connection: Connection, row: dict[str, Any], now: datetime.datetime) -> bool:
        """Insert a record unless a live one has its id; True if this wrote it."""
        if self._sql.upsert is not None:
            # INSERT .. ON CONFLICT (id) DO UPDATE .. WHERE <the old row expired>
            return connection.execute(self._sql.upsert, {**row, "p_now": now}).rowcount > 0
        # MySQL: a plain INSERT and its duplicate-key error. (INSERT IGNORE would turn other
        # errors into warnings; ON DUPLICATE KEY UPDATE reports 1 row both for an insert
        # and for a no-op under the CLIENT_FOUND_ROWS flag SQLAlchemy sets.)
        if _try_insert(connection, self._sql.insert, row):
            return True
        expired = {"p_id": row["id"], "p_now": now}
        if connection.execute(self._sql.delete_expired, expired).rowcount > 0:
            return _try_insert(connection, self._sql.insert, row)
        return False

    def _maybe_prune(self) -> None:
        """Delete one batch of expired rows, at most every ``prune_interval`` seconds."""
        now = _monotonic()
        if now < self._next_prune or not self._prune_lock.acquire(blocking=False):
            return
        try:
            if now < self._next_prune:
                return
            self._next_prune = now + self.prune_interval
            when = _engines.utcnow()

            def work(connection: Connection) -> int:
                deleted = 0
                for table, key in (
                    (self._record, self._record.c.id),
                    (self._group, self._group.c.group_id),
                ):
                    statement = _delete_batch(table, key, [table.c.expires_at < when])
                    deleted = max(deleted, connection.execute(statement).rowcount)
                return deleted

            try:
                deleted = self._run("prune expired task records", work)
            except StoreError as exc:
                logger.warning("flask-tasks: %s", exc)
                return
            if deleted >= PRUNE_BATCH:
                self._next_prune = now  # more to do: the next write goes on
        finally:
            self._prune_lock.release()


# -- helpers --------------------------------------------------------------------------------


def _engine_options(
    dialect: str, connect_timeout: int, engine_options: dict[str, Any]
) -> dict[str, Any]:
    options = dict(engine_options)
    if dialect != "sqlite":
        # One statement, one round trip: no BEGIN, COMMIT or ROLLBACK around it.
        options["isolation_level"] = "AUTOCOMMIT"
        if _SKIP_ROLLBACK:
            options["skip_autocommit_rollback"] = True
        timeouts: dict[str, Any] = {"connect_timeout": int(connect_timeout)}
        if dialect == "postgresql":
            timeouts["tcp_user_timeout"] = NETWORK_TIMEOUT * 1000
        else:
            # PyMySQL's connect_timeout covers the TCP connect only; the handshake and
            # every reply wait up to read_timeout, forever by default.
            timeouts["read_timeout"] = timeouts["write_timeout"] = NETWORK_TIMEOUT
        options["connect_args"] = {**timeouts, **options.get("connect_args", {})}
    return options


def _index_for(owner: bool, state: bool, name: bool) -> str:
    """The index whose order serves a listing with these filters."""
    if owner:
        return "owner_state" if state else "owner"
    if state:
        return "state"
    return "name" if name else "submitted"


def _check(
    task_id: str,
    *,
    name: str | None = None,
    owner: str | None = None,
    queue: str | None = None,
) -> None:
    """Refuse values longer than their columns, the same way on every database."""
    if len(task_id) > MAX_ID_LENGTH:
        raise StoreError(f"Task id {task_id[:40]!r}... is longer than {MAX_ID_LENGTH} characters.")
    for field, value in (("name", name), ("owner", owner), ("queue", queue)):
        if value is not None and len(value) > MAX_TEXT_LENGTH:
            raise StoreError(
                f"The {field} {value[:40]!r}... of task {task_id} is longer than"
                f" {MAX_TEXT_LENGTH} characters."
            )


def _row(
    task_id: str,
    *,
    name: str,
    state: TaskState,
    submitted_at: datetime.datetime,
    updated_at: datetime.datetime,
    expires_at: datetime.datetime,
    owner: str | None = None,
    queue: str | None = None,
    attempt: int = 0,
    started_at: datetime.datetime | None = None,
    finished_at: datetime.datetime | None = None,
    cancel_requested: bool = False,
    progress: str | None = None,
    celery_state: str | None = None,
    meta: str | None = None,
) -> dict[str, Any]:
    """Every column of a new record row."""
    return {
        "id": task_id,
        "name": name,
        "state": TaskState(state).value,
        "owner": owner,
        "queue": queue,
        "attempt": attempt,
        "submitted_at": submitted_at,
        "started_at": started_at,
        "finished_at": finished_at,
        "updated_at": updated_at,
        "expires_at": expires_at,
        "cancel_requested": cancel_requested,
        "progress": progress,
        "celery_state": celery_state,
        "meta": meta,
    }


def _try_insert(connection: Connection, statement: Any, row: dict[str, Any]) -> bool:
    try:
        connection.execute(statement, row)
    except IntegrityError as exc:
        code = getattr(exc.orig, "args", (None,))[0]
        if code == _MYSQL_DUPLICATE_KEY:
            return False
        raise
    return True


def _delete_batch(table: Table, key: Any, conditions: list[Any]) -> Any:
    """DELETE at most PRUNE_BATCH rows matching ``conditions`` (a derived table, so that
    MySQL accepts the LIMIT; the conditions are checked again on the rows deleted)."""
    batch = select(key).where(*conditions).limit(PRUNE_BATCH).subquery()
    return delete(table).where(key.in_(select(batch.c[key.name])), *conditions)


def _delete_all(connection: Connection, table: Table, key: Any, conditions: list[Any]) -> int:
    """Delete every row matching ``conditions``, one bounded batch per statement."""
    statement = _delete_batch(table, key, conditions)
    total = 0
    while True:
        deleted = connection.execute(statement).rowcount
        total += deleted
        if deleted < PRUNE_BATCH:
            return total


def _dump_progress(progress: Progress | None) -> str | None:
    if progress is None:
        return None
    return json.dumps(progress.to_dict(), separators=(",", ":"))


def _load_progress(text: str | None) -> Progress | None:
    if not text:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return Progress.from_dict(data) if isinstance(data, dict) else None


def _revoked_meta(task_id: str, now: datetime.datetime) -> str:
    """Celery's meta of a task revoked before it started (what ``AsyncResult`` reads)."""
    return json.dumps(
        {
            "status": "REVOKED",
            "result": {
                "exc_type": "TaskRevokedError",
                "exc_message": ["cancelled before it started"],
                "exc_module": "celery.exceptions",
            },
            "traceback": None,
            "children": [],
            "date_done": now.replace(tzinfo=_UTC).isoformat(),
            "task_id": task_id,
        }
    )


def _to_record(row: Any) -> TaskRecord:
    celery_state = row.celery_state
    fields = fields_from_meta(celery_state, row.meta) if celery_state else {}
    progress = _load_progress(row.progress) or fields.get("progress")
    return TaskRecord(
        id=row.id,
        name=row.name,
        state=TaskState(row.state),
        submitted_at=row.submitted_at,
        updated_at=row.updated_at,
        owner=row.owner,
        queue=row.queue,
        attempt=int(row.attempt),
        progress=progress,
        result=fields.get("result"),
        error=fields.get("error"),
        started_at=row.started_at,
        finished_at=row.finished_at,
        cancel_requested=bool(row.cancel_requested),
        celery_state=celery_state,
        meta=fields.get("meta"),
    )
