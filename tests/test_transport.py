"""The embedded broker transport (``tasksdb+<SQLAlchemy URL>``), with real processes.

Workers run as ``celery worker`` subprocesses on the app in
``transport_helpers/transport_worker_app.py``; raw Kombu consumers run in this process or in
helper scripts.  Nothing of the broker is mocked.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import kombu.exceptions
import pytest
from celery import Celery
from kombu import Connection
from sqlalchemy import create_engine
from sqlalchemy.exc import OperationalError

import flask_tasks.transport as transport
from flask_tasks.transport import SCHEME, Transport, register

HELPERS = Path(__file__).parent / "transport_helpers"
POSTGRESQL_URL = "postgresql+psycopg://postgres@127.0.0.1/test"


# -- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    transport.dispose_engines()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tasks.sqlite3"


def broker_url(path: Path) -> str:
    return f"{SCHEME}+sqlite:///{path}"


def count_rows(path: Path, table: str = "kombu_message") -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def rows(path: Path) -> list[tuple[int, int]]:
    """(id, visible) of every message row."""
    with sqlite3.connect(path) as db:
        return [(int(i), int(v)) for i, v in db.execute("SELECT id, visible FROM kombu_message")]


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text()

    def wait(self) -> int:
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"worker did not stop:\n{self.output()}")


StartWorker = Callable[..., Worker]


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[StartWorker]:
    """Start ``celery worker`` subprocesses; each call waits until the worker consumes."""
    workers: list[Worker] = []

    def start(
        url: str,
        *,
        backend: str,
        options: dict[str, Any] | None = None,
        pool: str = "solo",
        concurrency: int = 1,
    ) -> Worker:
        n = len(workers)
        ready = tmp_path / f"worker{n}.ready"
        log = tmp_path / f"worker{n}.log"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(HELPERS), os.environ.get("PYTHONPATH", "")]),
            "TRANSPORT_TEST_BROKER": url,
            "TRANSPORT_TEST_BACKEND": backend,
            "TRANSPORT_TEST_OPTIONS": json.dumps(options or {}),
            "TRANSPORT_TEST_READY": str(ready),
        }
        command = [
            sys.executable,
            *("-m", "celery", "-A", "transport_worker_app", "worker"),
            f"--pool={pool}",
            f"--concurrency={concurrency}",
            *("--hostname", f"w{n}-{uuid.uuid4().hex[:6]}@%h"),
            *("--loglevel", "INFO", "--without-mingle", "--without-gossip"),
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        worker = Worker(process, log)
        workers.append(worker)
        deadline = time.monotonic() + 30
        while not ready.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"worker did not start:\n{worker.output()}")
            time.sleep(0.02)
        return worker

    yield start
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def client_app(url: str, backend: str, options: dict[str, Any] | None = None) -> Celery:
    app = Celery("transport-client", set_as_current=False)
    app.conf.update(
        broker_url=url,
        result_backend=backend,
        broker_transport_options=options or {},
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=False,
    )
    return app


@pytest.fixture
def make_app() -> Iterator[Callable[..., Celery]]:
    apps: list[Celery] = []

    def make(url: str, backend: str, options: dict[str, Any] | None = None) -> Celery:
        app = client_app(url, backend, options)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def assert_clean_shutdown(*workers: Worker) -> None:
    """Warm-shut the workers down; each exits 0 and logged no error.

    (A stop takes 2-4 s: Celery's loop for polling transports runs one more
    ``drain_events(timeout=2.0)`` after the signal.)
    """
    for worker in workers:
        worker.process.send_signal(signal.SIGTERM)
    for worker in workers:
        code = worker.wait()
        output = worker.output()
        assert code == 0, output
        for bad in ("Traceback", "ERROR/", "CRITICAL/", "Connection to broker lost"):
            assert bad not in output, output


@pytest.fixture
def postgresql_url() -> str:
    """The PostgreSQL test database: skipped when unreachable, a failure when ``CI=true``."""
    try:
        engine = create_engine(POSTGRESQL_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
    except Exception as exc:
        message = f"PostgreSQL is not reachable at {POSTGRESQL_URL}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRESQL_URL


@pytest.fixture
def pg_tables(postgresql_url: str) -> Iterator[dict[str, str]]:
    """Transport options naming tables unique to this test; the tables are dropped after."""
    prefix = f"t{uuid.uuid4().hex[:10]}"
    options = {"queue_tablename": f"{prefix}_queue", "message_tablename": f"{prefix}_message"}
    yield options
    transport.dispose_engines()
    engine = create_engine(postgresql_url)
    schema = transport._schema(options["queue_tablename"], options["message_tablename"])
    schema.metadata.drop_all(engine)
    engine.dispose()


# -- registration and options -----------------------------------------------------------------


def test_register_is_idempotent_and_selects_the_transport(db_path: Path) -> None:
    register()
    register()
    with Connection(broker_url(db_path)) as connection:
        assert isinstance(connection.transport, Transport)
        assert connection.transport.polling_interval == transport.DEFAULT_POLLING_INTERVAL
        assert connection.default_channel.url == f"sqlite:///{db_path}"
    with Connection(f"{SCHEME}+postgresql+psycopg://postgres@127.0.0.1/test") as connection:
        assert isinstance(connection.transport, Transport)


def test_options_are_not_passed_to_create_engine(db_path: Path) -> None:
    options = {
        "polling_interval": 0.05,
        "visibility_timeout": 7,
        "busy_timeout": 1234,
        "engine_options": {"pool_size": 3},
        "max_retries": 2,
    }
    with Connection(broker_url(db_path), transport_options=options) as connection:
        channel = connection.default_channel
        assert connection.transport.polling_interval == 0.05
        assert channel.visibility_timeout == 7.0
        engine = channel._open()
        assert engine.pool.size() == 3
        with engine.connect() as db:
            assert db.exec_driver_sql("PRAGMA busy_timeout").scalar() == 1234
            assert db.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert db.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_bad_options_are_reported(db_path: Path) -> None:
    with (
        pytest.raises(ValueError, match="visibility_timeout"),
        Connection(broker_url(db_path), transport_options={"visibility_timeout": -1}) as c,
    ):
        c.default_channel  # noqa: B018
    with pytest.raises(ValueError, match="in-memory"), Connection(f"{SCHEME}+sqlite://") as c:
        c.SimpleQueue("q").put({})


# -- messages in the tables -------------------------------------------------------------------


def test_ack_deletes_and_requeue_reject_restore_reuse_the_original_row(db_path: Path) -> None:
    url = broker_url(db_path)
    with Connection(url) as connection:
        queue = connection.SimpleQueue("q")
        for i in range(3):
            queue.put({"i": i})
        original = rows(db_path)
        assert [visible for _, visible in original] == [1, 1, 1]

        first = queue.get(timeout=2)
        assert first.payload == {"i": 0}
        assert rows(db_path)[0] == (original[0][0], 0)
        first.requeue()
        assert rows(db_path) == original

        again = queue.get(timeout=2)
        assert again.payload == {"i": 0}
        assert again.delivery_info["redelivered"] is True
        again.reject()
        assert rows(db_path) == original[1:]

        second = queue.get(timeout=2)
        assert second.payload == {"i": 1}
        queue.close()  # unacked at close: restored in place
    assert rows(db_path) == original[1:]

    with Connection(url) as connection:
        queue = connection.SimpleQueue("q")
        assert queue.qsize() == 2
        for expected in (1, 2):
            message = queue.get(timeout=2)
            assert message.payload == {"i": expected}
            message.ack()
        with pytest.raises(Empty):
            queue.get(timeout=0.1)
        queue.close()
    assert count_rows(db_path) == 0
    assert count_rows(db_path, "kombu_queue") == 1


def test_no_ack_consumer_deletes_on_delivery(db_path: Path) -> None:
    with Connection(broker_url(db_path)) as connection:
        queue = connection.SimpleQueue("q", no_ack=True)
        queue.put({"x": 1})
        assert queue.get(timeout=2).payload == {"x": 1}
        assert count_rows(db_path) == 0
        queue.close()


def test_idle_poll_takes_no_write_lock(db_path: Path) -> None:
    options = {"busy_timeout": 1000}
    with Connection(broker_url(db_path), transport_options=options) as connection:
        channel = connection.default_channel
        channel._new_queue("empty")
        channel._new_queue("full")
        channel._put("full", {"properties": {"delivery_tag": "t1"}, "body": ""})
        locker = sqlite3.connect(db_path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another process is writing
        try:
            started = time.monotonic()
            with pytest.raises(Empty):
                channel._get("empty")
            assert time.monotonic() - started < 0.5  # did not wait for the lock
            # A candidate exists but the lock stays held past busy_timeout: no crash,
            # the message stays for the next poll.
            with pytest.raises(Empty):
                channel._get("full")
        finally:
            locker.rollback()
            locker.close()
        assert channel._get("full")["properties"]["delivery_tag"] == "t1"


def test_publish_that_cannot_be_stored_raises(db_path: Path, tmp_path: Path) -> None:
    options = {"busy_timeout": 100}
    with Connection(broker_url(db_path), transport_options=options) as connection:
        queue = connection.SimpleQueue("q")
        queue.put({"n": 1})
        locker = sqlite3.connect(db_path, isolation_level=None)
        locker.execute("BEGIN EXCLUSIVE")
        try:
            with pytest.raises(connection.connection_errors) as caught:
                queue.put({"n": 2})
            assert isinstance(caught.value, OperationalError)
        finally:
            locker.rollback()
            locker.close()
        queue.put({"n": 3})
        assert [queue.get(timeout=1).payload["n"] for _ in range(2)] == [1, 3]
        queue.close()

    missing = tmp_path / "no-such-directory" / "tasks.sqlite3"
    app = client_app(broker_url(missing), f"db+sqlite:///{tmp_path / 'results.sqlite3'}")
    try:
        # Celery re-raises the transport's connection error as Kombu's OperationalError.
        with pytest.raises(kombu.exceptions.OperationalError, match="unable to open database"):
            app.send_task("noop", retry=False)
    finally:
        app.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to a read-only directory")
def test_publish_into_read_only_directory_raises(tmp_path: Path) -> None:
    directory = tmp_path / "read-only"
    directory.mkdir()
    directory.chmod(0o500)
    try:
        with (
            Connection(broker_url(directory / "tasks.sqlite3")) as connection,
            pytest.raises(OperationalError),
        ):
            connection.SimpleQueue("q").put({})
    finally:
        directory.chmod(0o700)


# -- processes ----------------------------------------------------------------------------------


def test_many_processes_starting_at_once_on_a_fresh_file(db_path: Path) -> None:
    # Kombu's own transport loses about one process in three here ("UNIQUE constraint
    # failed: kombu_queue.name", "table kombu_queue already exists").
    processes = [
        subprocess.Popen(
            [sys.executable, str(HELPERS / "race_consumer.py"), broker_url(db_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(12)
    ]
    for process in processes:  # all imported: now start them together
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.flush()
    for process in processes:
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 0, stderr
    assert count_rows(db_path) == 0
    assert count_rows(db_path, "kombu_queue") == 1


def test_forked_child_does_not_reuse_the_parent_engine(db_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(HELPERS / "fork_check.py"), broker_url(db_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_worker_round_trip_is_fast_and_clean(
    db_path: Path, start_worker: StartWorker, make_app: Callable[..., Celery]
) -> None:
    url, backend = broker_url(db_path), f"db+sqlite:///{db_path}"
    options = {"polling_interval": 0.01}
    worker = start_worker(url, backend=backend, options=options)
    app = make_app(url, backend, options)
    app.send_task("noop", (0,)).get(timeout=10, interval=0.005)  # warm up
    timings = []
    for i in range(20):
        started = time.perf_counter()
        assert app.send_task("noop", (i,)).get(timeout=10, interval=0.005) == i
        timings.append(time.perf_counter() - started)
    assert statistics.median(timings) < 0.1, timings
    assert count_rows(db_path) == 0
    assert_clean_shutdown(worker)


def test_prefork_worker_deletes_acked_messages(
    db_path: Path, start_worker: StartWorker, make_app: Callable[..., Celery]
) -> None:
    url, backend = broker_url(db_path), f"db+sqlite:///{db_path}"
    worker = start_worker(url, backend=backend, pool="prefork", concurrency=2)
    app = make_app(url, backend)
    results = [app.send_task("noop", (i,)) for i in range(30)]
    # Tasks published from a forked pool process reach the queue too.
    children = app.send_task("fan_out", (5,)).get(timeout=20, interval=0.01)
    results += [app.AsyncResult(task_id) for task_id in children]
    for result in results:
        result.get(timeout=20, interval=0.01)
    wait_for(lambda: count_rows(db_path) == 0, 5, "acked messages to be deleted")
    assert_clean_shutdown(worker)


def test_killed_worker_message_is_redelivered_after_visibility_timeout(
    db_path: Path, tmp_path: Path, start_worker: StartWorker, make_app: Callable[..., Celery]
) -> None:
    url, backend = broker_url(db_path), f"db+sqlite:///{db_path}"
    options = {"visibility_timeout": 2}
    log = tmp_path / "slow.log"
    doomed = start_worker(url, backend=backend, options=options)
    app = make_app(url, backend, options)
    result = app.send_task("slow", (60, str(log)))
    wait_for(lambda: log.exists() and bool(log.read_text()), 10, "the task to start")
    doomed.process.send_signal(signal.SIGKILL)
    doomed.process.wait()
    killed_at = time.time()
    assert count_rows(db_path) == 1  # not acked, not lost

    rescuer = start_worker(url, backend=backend, options=options)
    assert result.get(timeout=20, interval=0.01) == rescuer.process.pid
    attempts = [line.split() for line in log.read_text().splitlines()]
    assert [int(pid) for pid, _, _ in attempts] == [doomed.process.pid, rescuer.process.pid]
    assert attempts[1][2] == "True"  # delivery_info["redelivered"]
    # Not before the row went stale: the last heartbeat was at most timeout/4 before the kill.
    assert float(attempts[1][1]) - killed_at >= 2 * 3 / 4 - 0.2
    wait_for(lambda: count_rows(db_path) == 0, 5, "the redelivered message to be deleted")


def test_long_task_on_a_live_worker_is_not_redelivered(
    db_path: Path, tmp_path: Path, start_worker: StartWorker, make_app: Callable[..., Celery]
) -> None:
    url, backend = broker_url(db_path), f"db+sqlite:///{db_path}"
    options = {"visibility_timeout": 1.5}  # heartbeat every 0.375 s
    log = tmp_path / "slow.log"
    workers = [start_worker(url, backend=backend, options=options) for _ in range(2)]
    app = make_app(url, backend, options)
    result = app.send_task("slow", (4.5, str(log)))  # 3 visibility timeouts
    pid = result.get(timeout=30, interval=0.01)
    assert pid in {worker.process.pid for worker in workers}
    assert len(log.read_text().splitlines()) == 1, log.read_text()
    assert count_rows(db_path) == 0


# -- PostgreSQL ----------------------------------------------------------------------------------


@pytest.mark.postgresql
def test_postgresql_messages_and_worker(
    postgresql_url: str,
    pg_tables: dict[str, str],
    tmp_path: Path,
    start_worker: StartWorker,
    make_app: Callable[..., Celery],
) -> None:
    url = f"{SCHEME}+{postgresql_url}"
    options = {**pg_tables, "visibility_timeout": 30}
    engine = create_engine(postgresql_url)

    def count() -> int:
        with engine.connect() as db:
            return int(
                db.exec_driver_sql(
                    f"SELECT count(*) FROM {pg_tables['message_tablename']}"
                ).scalar_one()
            )

    try:
        with Connection(url, transport_options=options) as connection:
            queue = connection.SimpleQueue("q")
            queue.put({"i": 1})
            queue.put({"i": 2})
            message = queue.get(timeout=2)
            message.requeue()
            assert count() == 2
            again = queue.get(timeout=2)
            assert (again.payload, again.delivery_info["redelivered"]) == ({"i": 1}, True)
            again.ack()
            queue.get(timeout=2).reject()
            assert count() == 0
            queue.close()

        backend = f"db+sqlite:///{tmp_path / 'results.sqlite3'}"
        worker = start_worker(url, backend=backend, options=options)
        app = make_app(url, backend, options)
        for i in range(5):
            assert app.send_task("noop", (i,)).get(timeout=10, interval=0.01) == i
        wait_for(lambda: count() == 0, 5, "acked messages to be deleted")
        assert_clean_shutdown(worker)
    finally:
        engine.dispose()
