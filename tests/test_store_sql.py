"""What the SQL record store does beyond the contract of ``test_store.py``.

Tables created by many processes at once, one SQLite file shared with the embedded
transport, the cost of a page, pruning without ``prune()``, forks, unreachable servers,
round trips and groups, on SQLite and (when they run) PostgreSQL and MariaDB.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import event, func, select, update

import flask_tasks.store.sql as sql
import flask_tasks.transport  # noqa: F401  (registers tasksdb+)
from conftest import require_service
from flask_tasks import _engines
from flask_tasks.state import Progress, TaskRecord, TaskState, utcnow
from flask_tasks.store import create_store
from flask_tasks.store.base import CancelOutcome, StartDecision, StoreError
from flask_tasks.store.sql import SQLStore

POSTGRESQL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
MARIADB_URL = "mysql+pymysql://root@127.0.0.1:3306/test"
DATABASES = ["sqlite", "postgresql", "mariadb"]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}

OpenStore = Callable[..., SQLStore]


def database_url(kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'tasks.sqlite3'}"
    if kind == "postgresql":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        return POSTGRESQL_URL
    require_service("MariaDB", "127.0.0.1", 3306)
    return MARIADB_URL


@pytest.fixture(params=DATABASES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return database_url(request.param, tmp_path)


@pytest.fixture
def open_store() -> Iterator[OpenStore]:
    """Open stores, each with tables of its own; drop them afterwards."""
    opened: list[SQLStore] = []

    def open_(url: str, **options: Any) -> SQLStore:
        options.setdefault("prefix", new_prefix())
        store = SQLStore(url, **options)
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.drop()
        store.close()


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def record(*, owner: str | None = "alice", at: datetime.datetime | None = None) -> TaskRecord:
    now = at or utcnow()
    return TaskRecord(
        id=str(uuid.uuid4()),
        name="app.tasks.work",
        state=TaskState.QUEUED,
        submitted_at=now,
        updated_at=now,
        owner=owner,
        queue="celery",
    )


def success(task_id: str, value: Any = 1) -> str:
    return json.dumps({"status": "SUCCESS", "result": value, "task_id": task_id})


def count_rows(store: SQLStore, table: str = "record") -> int:
    """Rows in the table, expired or not (what the store's reads do not show)."""
    target = store._record if table == "record" else store._group
    with store._engine().connect() as connection:
        return int(connection.execute(select(func.count()).select_from(target)).scalar_one())


def expire_everything(store: SQLStore) -> None:
    past = utcnow() - datetime.timedelta(seconds=1)
    with _engines.write(store._engine()) as connection:
        connection.execute(update(store._record).values(expires_at=past))
        connection.execute(update(store._group).values(expires_at=past))


def run_script(script: str, *args: str, timeout: float = 60) -> str:
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=ENV,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# -- tables ---------------------------------------------------------------------------------

RACE_SCRIPT = """
import os, sys, uuid
from flask_tasks.state import TaskRecord, TaskState, utcnow
from flask_tasks.store.sql import SQLStore

url, prefix, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
go_read, go_write = os.pipe()
children = []
for _ in range(count):
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(go_write)
            os.read(go_read, 1)  # all start at once
            store = SQLStore(url, prefix=prefix)
            now = utcnow()
            store.create(TaskRecord(id=str(uuid.uuid4()), name="race",
                                    state=TaskState.QUEUED, submitted_at=now, updated_at=now))
            store.close()
            code = 0
        except BaseException:
            import traceback
            traceback.print_exc()
        finally:
            os._exit(code)
    children.append(pid)
os.write(go_write, b"x" * count)
failed = [pid for pid in children if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0]
assert not failed, f"{len(failed)} of {count} processes failed"
print("ok")
"""


def test_tables_are_created_race_free_by_many_processes(url: str) -> None:
    """On a fresh SQLite file (WAL switched on by whoever comes first) or a fresh schema."""
    prefix = new_prefix()
    assert run_script(RACE_SCRIPT, url, prefix, "8").strip() == "ok"
    store = SQLStore(url, prefix=prefix)
    try:
        assert store.counts()[TaskState.QUEUED] == 8
        if url.startswith("sqlite"):
            with store._engine().connect() as connection:
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        store.drop()
        store.close()


def test_the_tables_and_their_indexes(open_store: OpenStore, tmp_path: Path) -> None:
    store = open_store(database_url("sqlite", tmp_path), prefix="shop")
    store.get("x")  # creates the tables
    with store._engine().connect() as connection:
        indexes = {
            name: [row[2] for row in connection.exec_driver_sql(f"PRAGMA index_info({name})")]
            for (name,) in connection.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND name LIKE 'ix_shop_%'"
            )
        }
    assert indexes == {
        "ix_shop_record_owner": ["owner", "submitted_at", "id"],
        "ix_shop_record_state": ["state", "submitted_at", "id"],
        "ix_shop_record_owner_state": ["owner", "state", "submitted_at", "id"],
        "ix_shop_record_submitted": ["submitted_at", "id"],
        "ix_shop_record_name": ["name", "submitted_at", "id"],
        "ix_shop_record_expires": ["expires_at"],
        "ix_shop_group_expires": ["expires_at"],
    }


# -- the embedded transport's file ------------------------------------------------------------


def test_the_store_shares_one_sqlite_file_with_the_embedded_transport(
    tmp_path: Path, open_store: OpenStore
) -> None:
    path = tmp_path / "tasks.sqlite3"
    store = open_store(f"sqlite:///{path}")
    errors: list[BaseException] = []
    written: list[int] = []
    stop = threading.Event()

    def write_records() -> None:
        count = 0
        try:
            while not stop.is_set():
                created = record()
                store.create(created)
                store.mark_running(created.id, name=created.name, attempt=1, started_at=utcnow())
                store.write_progress(created.id, Progress.make(1, 2))
                store.save(created.id, celery_state="SUCCESS", meta=success(created.id))
                count += 1
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        written.append(count)

    threads = [threading.Thread(target=write_records) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        with Connection(f"tasksdb+sqlite:///{path}") as connection:
            queue = connection.SimpleQueue("shared")
            for i in range(40):
                queue.put({"n": i})
            received = []
            for _ in range(40):
                message = queue.get(timeout=10)
                received.append(message.payload["n"])
                message.ack()
            # One engine (one pool, one set of pragmas) per file and process.
            assert queue.channel._open() is store._engine()
            queue.close()
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert not errors, errors
    assert sorted(received) == list(range(40))
    assert sum(written) > 0
    assert store.counts()[TaskState.SUCCEEDED] == sum(written)


# -- the cost of a page ---------------------------------------------------------------------


def test_a_page_is_one_select_with_a_limit(url: str, open_store: OpenStore) -> None:
    store = open_store(url)
    start = utcnow() - datetime.timedelta(hours=1)
    for i in range(25):
        store.create(record(at=start + datetime.timedelta(seconds=i)))
    statements: list[str] = []

    def capture(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = store._engine()
    event.listen(engine, "before_cursor_execute", capture)
    try:
        cursor, seen = None, 0
        for _ in range(3):
            statements.clear()
            page = store.list(owner="alice", limit=10, cursor=cursor)
            assert len(statements) == 1, statements
            assert statements[0].lstrip().upper().startswith("SELECT")
            assert "LIMIT" in statements[0].upper()
            seen += len(page.records)
            cursor = page.next_cursor
        assert seen == 25
        assert cursor is None
    finally:
        event.remove(engine, "before_cursor_execute", capture)


FILTERS: list[dict[str, Any]] = [
    {"owner": "user3"},
    {"state": TaskState.RUNNING},
    {"owner": "user3", "state": TaskState.RUNNING},
    {},
    {"name": "app.t2"},
]
# The share of the records of ``fill_directly`` that each filter keeps.
SHARES = [1 / 10, 1 / 3, 1 / 30, 1, 1 / 5]


def fill_directly(store: SQLStore, count: int) -> list[dict[str, Any]]:
    """``count`` records in one INSERT: 5 names, 3 states, 10 owners, one second apart."""
    start = utcnow() - datetime.timedelta(days=1)
    expires = utcnow() + datetime.timedelta(days=1)
    rows = [
        sql._row(
            str(uuid.uuid4()),
            name=f"app.t{i % 5}",
            state=(TaskState.QUEUED, TaskState.RUNNING, TaskState.SUCCEEDED)[i % 3],
            owner=f"user{i % 10}",
            submitted_at=start + datetime.timedelta(seconds=i),
            updated_at=start,
            expires_at=expires,
        )
        for i in range(count)
    ]
    store.get("x")  # tables
    with _engines.write(store._engine()) as connection:
        connection.execute(store._sql.insert, rows)
    return rows


def page_statement(store: SQLStore, cursor: str | None, **filters: Any) -> tuple[str, Any]:
    """The SELECT that ``list`` sends for one page, and its parameters."""
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        captured.append((statement, parameters))

    engine = store._engine()
    event.listen(engine, "before_cursor_execute", capture)
    try:
        page = store.list(limit=20, cursor=cursor, **filters)
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    assert len(page.records) == 20
    [found] = captured
    return found


def deep_cursor(rows: list[dict[str, Any]]) -> str:
    """A cursor half way down the list."""
    row = rows[len(rows) // 2]
    return sql._encode_cursor(row["submitted_at"], row["id"])


def test_every_filter_reads_its_index_in_order_on_sqlite(
    tmp_path: Path, open_store: OpenStore
) -> None:
    store = open_store(database_url("sqlite", tmp_path))
    cursor = deep_cursor(fill_directly(store, 3000))
    expected = ["owner", "state", "owner_state", "submitted", "name"]
    for filters, index in zip(FILTERS, expected, strict=True):
        for at in (None, cursor):
            statement, parameters = page_statement(store, at, **filters)
            with store._engine().connect() as connection:
                plan = " / ".join(
                    str(row[3])
                    for row in connection.exec_driver_sql(
                        f"EXPLAIN QUERY PLAN {statement}", parameters
                    )
                )
            assert f"ix_{store.prefix}_record_{index}" in plan.split(), (filters, plan)
            assert "TEMP B-TREE" not in plan, (filters, plan)  # no sort: the index is the order


def test_a_deep_page_reads_a_page_of_rows_on_mariadb(
    tmp_path: Path, open_store: OpenStore
) -> None:
    store = open_store(database_url("mariadb", tmp_path))
    cursor = deep_cursor(fill_directly(store, 3000))
    with store._engine().connect() as connection:

        def reads() -> int:
            status = connection.exec_driver_sql("SHOW SESSION STATUS LIKE 'Handler_read%%'")
            return sum(int(value) for key, value in status if key != "Handler_read_rnd_next")

        for filters in FILTERS:
            for at in (None, cursor):
                statement, parameters = page_statement(store, at, **filters)
                before = reads()
                assert len(connection.exec_driver_sql(statement, parameters).all()) == 21
                assert reads() - before <= 25, (filters, at, reads() - before)


def rows_examined(node: dict[str, Any]) -> int:
    """Rows the scans of a PostgreSQL plan read (kept or filtered out)."""
    own = 0
    if "Scan" in node["Node Type"] and node["Node Type"] != "Bitmap Index Scan":
        own = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
    return own + sum(rows_examined(child) for child in node.get("Plans", []))


def test_no_page_reads_more_than_its_share_on_postgresql(
    tmp_path: Path, open_store: OpenStore
) -> None:
    """PostgreSQL picks its plan by cost (an index of a filter, or the time index and a
    filter); either way a page reads about ``limit / share`` rows, whatever its depth."""
    store = open_store(database_url("postgresql", tmp_path))
    cursor = deep_cursor(fill_directly(store, 3000))
    with store._engine().connect() as connection:
        connection.exec_driver_sql(f"ANALYZE {store._record.name}")
        for filters, share in zip(FILTERS, SHARES, strict=True):
            for at in (None, cursor):
                statement, parameters = page_statement(store, at, **filters)
                [[plan]] = connection.exec_driver_sql(
                    f"EXPLAIN (ANALYZE, FORMAT JSON) {statement}", parameters
                ).all()
                examined = rows_examined(plan[0]["Plan"])
                assert examined <= 21 / share * 1.5 + 5, (filters, at, examined, plan)


def test_cursors_are_opaque_and_checked(tmp_path: Path, open_store: OpenStore) -> None:
    store = open_store(database_url("sqlite", tmp_path))
    for bad in ("nonsense", "", "W10", sql._encode_cursor(utcnow(), "x")[:-3]):
        with pytest.raises(ValueError, match="not a cursor"):
            store.list(cursor=bad)
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=0)


def test_owners_and_ids_compare_exactly(url: str, open_store: OpenStore) -> None:
    """MariaDB's default collation ignores case: not for owners."""
    store = open_store(url)
    upper = record(owner="Alice")
    store.create(upper)
    assert store.list(owner="alice").records == []
    assert store.counts(owner="alice")[TaskState.QUEUED] == 0
    assert store.get(upper.id.upper()) is None


# -- expiry ---------------------------------------------------------------------------------


def test_some_write_prunes_expired_rows_at_most_once_a_minute(
    url: str, open_store: OpenStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]
    monkeypatch.setattr(sql, "_monotonic", lambda: clock[0])
    monkeypatch.setattr(sql, "PRUNE_BATCH", 2)
    store = open_store(url)
    store.create(record())  # the first write of this process prunes (nothing yet)
    for _ in range(4):
        store.create(record())
    store.save_group("g", "{}")
    expire_everything(store)
    assert store.list().records == []  # invisible at once...
    assert count_rows(store) == 5  # ...but still there

    store.create(record())
    assert count_rows(store) == 6  # less than a minute later: no prune
    clock[0] += 61
    store.create(record())  # one bounded batch...
    assert count_rows(store) == 7 - 2
    store.create(record())  # ...and the next write goes on, as the batch was full
    assert count_rows(store) == 8 - 4
    store.create(record())
    assert count_rows(store) == 9 - 5
    assert count_rows(store, "group") == 0
    store.create(record())  # done: the next prune is a minute away
    assert count_rows(store) == 5


def test_an_expired_record_is_replaced_but_a_long_task_lives_on(
    url: str, open_store: OpenStore
) -> None:
    store = open_store(url)
    # A task id used again after its record expired (task_id="report-42" every day).
    reused = record(owner="alice")
    store.create(reused)
    store.save(reused.id, celery_state="SUCCESS", meta=success(reused.id))
    # A task that runs longer than the retention without a state change.
    long = record(owner="bob")
    store.create(long)
    store.mark_running(long.id, name=long.name, attempt=1, started_at=utcnow())
    expire_everything(store)

    store.create(reused.evolve(owner="carol"))
    again = store.get(reused.id)
    assert again is not None
    assert (again.state, again.owner, again.result) == (TaskState.QUEUED, "carol", None)
    assert (
        store.mark_running(reused.id, name=reused.name, attempt=1, started_at=utcnow())
        is StartDecision.RUN
    )

    assert store.get(long.id) is None  # expired: invisible...
    assert store.save(long.id, celery_state="SUCCESS", meta=success(long.id, 7))
    done = store.get(long.id)  # ...until its end brings it back, whole
    assert done is not None
    assert (done.state, done.owner, done.result) == (TaskState.SUCCEEDED, "bob", 7)
    assert done.started_at is not None


# -- processes, errors, round trips ---------------------------------------------------------

FORK_SCRIPT = """
import os, sys, uuid
from flask_tasks.state import TaskRecord, TaskState, utcnow
from flask_tasks.store.sql import SQLStore

url, prefix = sys.argv[1], sys.argv[2]
store = SQLStore(url, prefix=prefix)

def record(name):
    now = utcnow()
    return TaskRecord(id=str(uuid.uuid4()), name=name, state=TaskState.QUEUED,
                      submitted_at=now, updated_at=now)

parent = record("parent")
store.create(parent)
parent_engine = store._engine()
with parent_engine.connect() as connection:  # back in the pool after this
    parent_connection = connection.connection.dbapi_connection
pid = os.fork()
if pid == 0:
    code = 1
    try:
        store.create(record("child"))
        engine = store._engine()
        assert engine is not parent_engine, "the child reused its parent's engine"
        with engine.connect() as connection:
            assert connection.connection.dbapi_connection is not parent_connection
        assert store.get(parent.id) is not None
        code = 0
    except BaseException:
        import traceback
        traceback.print_exc()
    finally:
        os._exit(code)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child failed"
# The parent's pooled connection was neither used nor closed by the child.
assert store._engine() is parent_engine
store.create(record("after"))
assert sorted(r.name for r in store.list().records) == ["after", "child", "parent"]
store.drop()
store.close()
print("ok")
"""


def test_a_forked_child_writes_through_connections_of_its_own(url: str) -> None:
    assert run_script(FORK_SCRIPT, url, new_prefix()).strip() == "ok"


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("scheme", ["postgresql+psycopg", "mysql+pymysql"])
def test_an_unreachable_server_is_a_store_error_at_once(scheme: str) -> None:
    port = closed_port()
    store = create_store(f"{scheme}://app:s3cret@127.0.0.1:{port}/test")
    started = time.monotonic()
    with pytest.raises(StoreError) as caught:
        store.get(str(uuid.uuid4()))
    assert time.monotonic() - started < 5
    message = str(caught.value)
    assert f"127.0.0.1:{port}" in message, message
    assert "s3cret" not in message, message
    assert "***" in message, message
    with pytest.raises(StoreError):
        store.create(record())
    store.close()


def test_a_server_that_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks
        port = silent.getsockname()[1]
        store = SQLStore(f"postgresql+psycopg://app@127.0.0.1:{port}/test", connect_timeout=2)
        started = time.monotonic()
        with pytest.raises(StoreError, match="timeout"):
            store.write_progress(str(uuid.uuid4()), Progress.make(1, 2))
        assert time.monotonic() - started < 6
        store.close()


class RoundTrips:
    """A TCP proxy in front of a server that counts round trips: each time the client
    speaks after the server did."""

    def __init__(self, port: int) -> None:
        self.count = 0
        self._target = port
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            self._sockets += [client, server]
            last: list[str] = [""]
            for source, sink, way in ((client, server, "out"), (server, client, "in")):
                threading.Thread(
                    target=self._pump, args=(source, sink, way, last), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, way: str, last: list[str]) -> None:
        while True:
            try:
                data = source.recv(65536)
            except OSError:
                data = b""
            if not data:
                for end in (source, sink):
                    with contextlib.suppress(OSError):
                        end.shutdown(socket.SHUT_RDWR)
                return
            with self._lock:
                if way == "out" and last[0] != "out":
                    self.count += 1
                last[0] = way
            try:
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        self._listener.close()
        for end in self._sockets:
            end.close()


@pytest.mark.parametrize(("kind", "port"), [("postgresql", 5432), ("mariadb", 3306)])
def test_each_write_and_read_is_one_round_trip(kind: str, port: int, tmp_path: Path) -> None:
    database_url(kind, tmp_path)  # skips when the server is not running
    proxy = RoundTrips(port)
    scheme, user = (
        ("postgresql+psycopg", "postgres") if port == 5432 else ("mysql+pymysql", "root")
    )
    store = SQLStore(f"{scheme}://{user}@127.0.0.1:{proxy.port}/test", prefix=new_prefix())
    try:
        costs: dict[str, int] = {}

        def cost(name: str, call: Callable[[], object]) -> None:
            before = proxy.count
            call()
            costs[name] = proxy.count - before  # the last run counts

        store.get("warm-up")  # connects, creates the tables

        for _ in range(8):  # past psycopg's statement preparation (the 5th run)
            created, queued = record(), record()
            cost("create", partial(store.create, created))
            store.create(queued)
            cost("request_cancel", partial(store.request_cancel, queued.id))
            started = partial(
                store.mark_running, created.id, name="w", attempt=1, started_at=utcnow()
            )
            cost("mark_running", started)
            cost("write_progress", partial(store.write_progress, created.id, Progress.make(1, 2)))
            cost("get", partial(store.get, created.id))
            cost("list", partial(store.list, owner="alice", limit=5))
            meta = success(created.id)
            cost("save", partial(store.save, created.id, celery_state="SUCCESS", meta=meta))
            cost("get_meta", partial(store.get_meta, created.id))
        assert costs == dict.fromkeys(costs, 1), costs
    finally:
        store.drop()
        store.close()
        proxy.close()


# -- groups and the rest --------------------------------------------------------------------


def test_groups(url: str, open_store: OpenStore) -> None:
    store = open_store(url)
    group_id = str(uuid.uuid4())
    assert store.get_group(group_id) is None
    store.save_group(group_id, '{"result": [1]}')
    assert store.get_group(group_id) == '{"result": [1]}'
    store.save_group(group_id, '{"result": [2]}')  # saved again: replaced
    assert store.get_group(group_id) == '{"result": [2]}'
    store.delete_group(group_id)
    assert store.get_group(group_id) is None
    store.save_group(group_id, "{}")
    expire_everything(store)
    assert store.get_group(group_id) is None
    store.prune()
    assert count_rows(store, "group") == 0


def test_cancelling_a_queued_task_leaves_celery_a_revoked_meta(
    tmp_path: Path, open_store: OpenStore
) -> None:
    store = open_store(database_url("sqlite", tmp_path))
    queued = record()
    store.create(queued)
    assert store.request_cancel(queued.id) is CancelOutcome.CANCELLED
    found = store.get_meta(queued.id)
    assert found is not None
    assert found[0] == "REVOKED"
    assert json.loads(found[1])["result"]["exc_type"] == "TaskRevokedError"
    got = store.get(queued.id)
    assert got is not None
    assert got.error is not None
    assert got.error.type == "TaskRevokedError"


def test_bad_settings_and_values_are_reported(tmp_path: Path, open_store: OpenStore) -> None:
    with pytest.raises(ValueError, match="in-memory"):
        SQLStore("sqlite://")
    with pytest.raises(ValueError, match="not 'oracle'"):
        SQLStore("oracle://scott@db/orcl")
    with pytest.raises(ValueError, match="prefix"):
        SQLStore(f"sqlite:///{tmp_path / 'x.db'}", prefix="no-dashes")
    with pytest.raises(ValueError, match="not an SQLAlchemy database URL"):
        SQLStore("nonsense")
    store = open_store(database_url("sqlite", tmp_path))
    with pytest.raises(StoreError, match="longer than 155"):
        store.create(record().evolve(id="x" * 156))
    with pytest.raises(StoreError, match="owner"):
        store.create(record(owner="o" * 256))
    store.create(record().evolve(id="x" * 155))
    assert store.get("x" * 155) is not None
