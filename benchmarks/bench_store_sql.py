"""The SQL record store's cost per call, on SQLite and PostgreSQL, with Celery's database
result backend storing a ``PROGRESS`` state as the comparison for ``write_progress``.

Run from the repository root::

    .venv/bin/python benchmarks/bench_store_sql.py [--calls 300] [--sizes 100,10000]
        [--no-postgresql]

For each database and each table size (records already there before measuring), the
median time of one call, in one thread, of:

* ``create``, ``mark_running``, ``write_progress``, ``save`` (SUCCESS) and ``get``, each
  on ``--calls`` records of their own;
* ``list(owner="alice", limit=20)``, a full page of the owner's newest records, to show a
  page costs the same over 100 records as over 10,000 (one fifth of them are alice's);
* ``celery.backends.database.DatabaseBackend.store_result(id, {"current": 1}, "PROGRESS")``
  on rows it created before (``db+sqlite:///`` on a file of its own, and
  ``db+postgresql+psycopg://``), twice: with its engine cached, as in a prefork pool
  process (Celery caches engines only there), and as Celery does everywhere else (a new
  engine, so a new connection, per call).

SQLite files live in a temporary directory (WAL, ``synchronous=NORMAL``, like the embedded
default); PostgreSQL is ``postgresql+psycopg://postgres@127.0.0.1:5432/test``, where the
table is analyzed after the load (as autovacuum soon does). Tables are dropped afterwards.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from celery import Celery
from celery.backends.database.session import ResultModelBase
from sqlalchemy import create_engine

from flask_tasks.state import Progress, TaskRecord, TaskState, utcnow
from flask_tasks.store.sql import SQLStore

POSTGRESQL_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
OPERATIONS = ["create", "mark_running", "write_progress", "save", "get", "list"]


def median_us(calls: Iterable[Callable[[], object]]) -> float:
    """The median duration of the calls, in microseconds."""
    timings = []
    for call in calls:
        started = time.perf_counter()
        call()
        timings.append(time.perf_counter() - started)
    return statistics.median(timings) * 1e6


def record(owner: str, at: datetime.datetime) -> TaskRecord:
    return TaskRecord(
        id=str(uuid.uuid4()),
        name="app.tasks.report",
        state=TaskState.QUEUED,
        submitted_at=at,
        updated_at=at,
        owner=owner,
        queue="celery",
    )


def measure_store(url: str, size: int, calls: int) -> dict[str, float]:
    """Median µs per call of each operation, on a table holding ``size`` records."""
    prefix = f"bench_{uuid.uuid4().hex[:8]}"
    store = SQLStore(url, prefix=prefix)
    try:
        start = utcnow() - datetime.timedelta(hours=1)
        for i in range(size):
            owner = "alice" if i % 5 == 0 else f"user{i % 50}"
            store.create(record(owner, start + datetime.timedelta(milliseconds=i)))
        if url.startswith("postgresql"):
            # What autovacuum does within a minute of the load: until then, the planner of
            # a table it has never analyzed expects it empty (and sorts all alice's rows).
            engine = create_engine(url)
            with engine.connect() as connection:
                connection.exec_driver_sql(f"ANALYZE {prefix}_record")
                connection.commit()
            engine.dispose()
        mine = [record("alice", utcnow()) for _ in range(calls)]
        meta = '{"status": "SUCCESS", "result": {"rows": 42}, "traceback": null}'
        progress = Progress.make(1, 10, "row 1")
        result = {
            "create": median_us(lambda r=r: store.create(r) for r in mine),
            "mark_running": median_us(
                lambda r=r: store.mark_running(r.id, name=r.name, attempt=1, started_at=utcnow())
                for r in mine
            ),
            "write_progress": median_us(
                lambda r=r: store.write_progress(r.id, progress) for r in mine
            ),
            "save": median_us(
                lambda r=r: store.save(r.id, celery_state="SUCCESS", meta=meta) for r in mine
            ),
            "get": median_us(lambda r=r: store.get(r.id) for r in mine),
            "list": median_us(lambda: store.list(owner="alice", limit=20) for _ in mine),
        }
        page = store.list(owner="alice", limit=20)
        assert len(page.records) == 20
        assert page.next_cursor is not None
        return result
    finally:
        store.drop()
        store.close()


def measure_celery(url: str, calls: int, *, cached_engine: bool) -> float:
    """Median µs of Celery's ``store_result`` of a PROGRESS state on an existing row."""
    suffix = uuid.uuid4().hex[:8]
    app = Celery("bench_store_sql", set_as_current=False)
    app.conf.update(
        result_backend=f"db+{url}",
        database_table_names={"task": f"bench_task_{suffix}", "group": f"bench_group_{suffix}"},
    )
    backend: Any = app.backend
    if cached_engine:
        backend.session_manager.forked = True  # what Celery sets in a prefork child
    try:
        ids = [str(uuid.uuid4()) for _ in range(calls)]
        for task_id in ids:
            backend.store_result(task_id, None, "STARTED")
        return median_us(
            lambda task_id=task_id: backend.store_result(task_id, {"current": 1}, "PROGRESS")
            for task_id in ids
        )
    finally:
        engine = create_engine(url)
        ResultModelBase.metadata.drop_all(engine)
        engine.dispose()
        for cached in backend.session_manager._engines.values():
            cached.dispose()
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--sizes", default="100,10000")
    parser.add_argument("--no-postgresql", action="store_true")
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]

    with tempfile.TemporaryDirectory() as directory:
        databases = {"SQLite": lambda name: f"sqlite:///{Path(directory) / name}.sqlite3"}
        if not args.no_postgresql:
            databases["PostgreSQL"] = lambda name: POSTGRESQL_URL
        columns: list[str] = []
        table: dict[str, dict[str, float]] = {}
        celery: dict[str, tuple[float, float]] = {}
        for database, url_of in databases.items():
            for size in sizes:
                column = f"{database} {size}"
                columns.append(column)
                print(f"measuring {column} ...", file=sys.stderr)
                for operation, value in measure_store(
                    url_of(f"s{size}"), size, args.calls
                ).items():
                    table.setdefault(operation, {})[column] = value
            print(f"measuring Celery on {database} ...", file=sys.stderr)
            url = url_of("celery")
            celery[database] = (
                measure_celery(url, args.calls, cached_engine=True),
                measure_celery(url, args.calls, cached_engine=False),
            )

    print(f"\nMedian µs per call ({args.calls} calls each, one thread), by database and records")
    width = max(len(c) for c in columns) + 2
    labels = {
        "create": "create",
        "mark_running": "mark_running",
        "write_progress": "write_progress",
        "save": "save (SUCCESS)",
        "get": "get",
        "list": "list(owner, limit=20)",
    }
    print(f"{'operation':<24}" + "".join(f"{c:>{width}}" for c in columns))
    for operation in OPERATIONS:
        cells = "".join(f"{table[operation][c]:>{width}.0f}" for c in columns)
        print(f"{labels[operation]:<24}{cells}")
    print()
    for database, (cached, uncached) in celery.items():
        ours = [table["write_progress"][c] for c in columns if c.startswith(database)]
        best = min(ours)
        print(
            f"{database}: Celery DatabaseBackend store_result(PROGRESS):"
            f" {cached:.0f} µs with its engine cached (prefork child),"
            f" {uncached:.0f} µs as elsewhere (new engine per call);"
            f" write_progress {best:.0f} µs ->"
            f" {cached / best:.1f}x / {uncached / best:.1f}x faster"
        )
    for database in databases:
        small, large = (table["list"][f"{database} {size}"] for size in (sizes[0], sizes[-1]))
        print(
            f"{database}: a page of list() over {sizes[-1]} records costs"
            f" {large / small:.2f}x what it costs over {sizes[0]}"
        )


if __name__ == "__main__":
    main()
