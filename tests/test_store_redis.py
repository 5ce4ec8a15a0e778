"""What only the Redis record store does: Celery's keys and channels, scripts, pipelining,
index costs, expiry, timeouts and forks. The shared contract is in test_store.py."""

from __future__ import annotations

import datetime
import json
import os
import socket
import threading
import time
import traceback
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from conftest import require_service
from flask_tasks.state import Progress, TaskRecord, TaskState, utcnow
from flask_tasks.store import create_store
from flask_tasks.store.base import CancelOutcome, StartDecision, StoreError
from flask_tasks.store.redis import RedisStore
from test_store import record, success_meta

pytestmark = pytest.mark.redis

URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def plain() -> Iterator[redis.Redis]:
    """A plain redis-py client on the test database, as Celery or a tool would use."""
    require_service("Redis", "127.0.0.1", 6379)
    client = redis.Redis.from_url(URL)
    yield client
    client.close()


@pytest.fixture
def make_store(plain: redis.Redis) -> Iterator[Any]:
    opened: list[RedisStore] = []

    def make(url: str = URL, **options: Any) -> RedisStore:
        store = RedisStore(url, prefix=f"tr{uuid.uuid4().hex[:10]}", **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.drop()
        store.close()


@pytest.fixture
def store(make_store: Any) -> RedisStore:
    made: RedisStore = make_store()
    return made


def running(store: RedisStore, task_id: str, attempt: int = 1) -> StartDecision:
    return store.mark_running(task_id, name="app.tasks.work", attempt=attempt, started_at=utcnow())


def messages(pubsub: Any, count: int, timeout: float = 2.0) -> list[tuple[str, bytes]]:
    """The next ``count`` published messages (channel, data), skipping subscribe replies."""
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=0.1)
        if message is not None and message["type"] == "message":
            got.append((message["channel"].decode(), message["data"]))
    return got


def prefix_keys(client: redis.Redis, store: RedisStore) -> set[bytes]:
    pattern = "".join(f"\\{c}" if c in "*?[]\\" else c for c in store.prefix) + ":*"
    return set(client.scan_iter(match=pattern, count=1000))


def busy(store: RedisStore) -> int:
    """Connections taken from the pool and not given back (idle ones in the store's lane
    are given back)."""
    pool = store.client.connection_pool  # a BlockingConnectionPool
    available = [c for c in list(pool.pool.queue) if c is not None]
    return len(pool._connections) - len(available) - len(store._idle)


def connections(store: RedisStore) -> list[Any]:
    return list(store.client.connection_pool._connections)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- Celery's key and channel ---------------------------------------------------------------


def test_meta_is_at_celerys_key_and_published_on_its_channel(
    store: RedisStore, plain: redis.Redis
) -> None:
    created = record()
    meta_key = f"celery-task-meta-{created.id}"
    assert store.meta_key(created.id) == meta_key
    pubsub = plain.pubsub()
    pubsub.subscribe(meta_key)
    try:
        store.create(created)
        running(store, created.id)
        meta = success_meta(created.id, {"n": 1})
        assert store.save(created.id, celery_state="SUCCESS", meta=meta)
        assert messages(pubsub, 1) == [(meta_key, meta.encode())]
    finally:
        pubsub.close()
    assert plain.get(meta_key) == meta.encode()  # a plain string, as Celery writes it
    assert 0 < plain.ttl(meta_key) <= store.retention.total_seconds()
    assert plain.ttl(store.record_key(created.id)) == plain.ttl(meta_key)
    # Nothing is stored twice: the record's hash has no result.
    fields = plain.hgetall(store.record_key(created.id))
    assert b"result" not in fields
    assert b"error" not in fields
    assert fields[b"celery_state"] == b"SUCCESS"


def test_celery_reads_what_the_store_writes(store: RedisStore) -> None:
    """Celery's own RedisBackend (get_task_meta, AsyncResult.get over pub/sub) on our keys."""
    from celery import Celery
    from celery.exceptions import TaskRevokedError
    from celery.result import AsyncResult

    app = Celery("store-test", backend=URL, set_as_current=False)
    try:
        done = record()
        store.create(done)
        store.save(done.id, celery_state="SUCCESS", meta=success_meta(done.id, [1, 2]))
        assert app.backend.get_task_meta(done.id)["result"] == [1, 2]

        later = record()
        store.create(later)
        timer = threading.Timer(
            0.3,
            lambda: store.save(
                later.id, celery_state="SUCCESS", meta=success_meta(later.id, "late")
            ),
        )
        timer.start()
        try:
            assert AsyncResult(later.id, app=app).get(timeout=5) == "late"
        finally:
            timer.join()

        # A task cancelled while queued gets Celery's REVOKED meta: get() stops waiting.
        cancelled = record()
        store.create(cancelled)
        assert store.request_cancel(cancelled.id) is CancelOutcome.CANCELLED
        with pytest.raises(TaskRevokedError):
            AsyncResult(cancelled.id, app=app).get(timeout=5)
        got = store.get(cancelled.id)
        assert got is not None
        assert got.error is not None
        assert got.error.type == "TaskRevokedError"
    finally:
        backend = app.backend
        backend.result_consumer.stop()
        backend.client.connection_pool.disconnect()
        app.close()


# -- change notifications -----------------------------------------------------------------


def test_each_change_is_announced_on_the_events_channel(
    store: RedisStore, plain: redis.Redis
) -> None:
    created = record()
    channel = store.events_channel(created.id)
    assert channel == f"{store.prefix}:events:{created.id}"
    pubsub = plain.pubsub()
    pubsub.subscribe(channel)
    try:
        store.create(created)  # nobody can be waiting on a new id: not announced
        running(store, created.id)
        store.write_progress(created.id, Progress.make(3, 10, "row 3"))
        store.request_cancel(created.id)
        store.save(created.id, celery_state="SUCCESS", meta=success_meta(created.id, 1))
        # Ignored writes to a final record announce nothing.
        store.write_progress(created.id, Progress.make(4, 10))
        running(store, created.id, attempt=2)
        store.delete(created.id)
        got = [json.loads(data) for _, data in messages(pubsub, 5)]
        assert not messages(pubsub, 1, timeout=0.2)
    finally:
        pubsub.close()
    assert [m["state"] for m in got] == [
        "running", "running", "running", "succeeded", None
    ]  # fmt: skip
    assert [m.get("cancel_requested") for m in got] == [False, False, True, True, None]
    assert got[1]["progress"] == {
        "current": 3, "total": 10, "percent": 30.0, "message": "row 3", "eta_seconds": None
    }  # fmt: skip
    assert all(isinstance(m["updated_at"], float) for m in got[:4])
    assert got[4] == {"state": None, "deleted": True}


# -- scripts ------------------------------------------------------------------------------


def test_writes_survive_a_script_flush(store: RedisStore, plain: redis.Redis) -> None:
    """NOSCRIPT (a restarted server, SCRIPT FLUSH): the store sends the script again."""
    created = record()
    plain.script_flush()
    store.create(created)
    plain.script_flush()
    finish = store.create_pipelined(record())
    finish()
    for write in (
        lambda: running(store, created.id),
        lambda: store.write_progress(created.id, Progress.make(1, 2)),
        lambda: store.request_cancel(created.id),
        lambda: store.save(created.id, celery_state="SUCCESS", meta=success_meta(created.id, 1)),
    ):
        plain.script_flush()
        write()
    plain.script_flush()
    got = store.get(created.id)
    assert got is not None
    assert (got.state, got.cancel_requested) == (TaskState.SUCCEEDED, True)
    plain.script_flush()
    assert len(store.list().records) == 2
    plain.script_flush()
    assert store.counts()[TaskState.QUEUED] == 1


# -- create_pipelined ---------------------------------------------------------------------


def test_create_pipelined_sends_at_once_and_reads_the_reply_later(
    store: RedisStore, plain: redis.Redis
) -> None:
    created = record()
    finish = store.create_pipelined(created)
    # The script is on its way before finish() is called: the record appears by itself.
    deadline = time.monotonic() + 2
    while not plain.exists(store.record_key(created.id)):
        assert time.monotonic() < deadline, "the create was not sent"
        time.sleep(0.005)
    # The pending connection is not shared: the same thread goes on using the store.
    assert busy(store) == 1
    assert store.get(created.id) is not None
    finish()
    finish()  # a second call does nothing
    assert busy(store) == 0
    got = store.get(created.id)
    assert got is not None
    assert (got.state, got.owner) == (TaskState.QUEUED, "alice")


def test_create_pipelined_overlaps_many_writes(store: RedisStore) -> None:
    made = [record() for _ in range(20)]
    finishers = [store.create_pipelined(created) for created in made]
    for finish in finishers:
        finish()
    assert {r.id for r in store.list(limit=50).records} == {r.id for r in made}
    assert busy(store) == 0


def kill_idle_connections(store: RedisStore, plain: redis.Redis) -> int:
    """Have the server close the connections idle in the store's lane (as a restart or its
    ``timeout`` setting would)."""
    killed = 0
    for connection in store._idle:
        connection.send_command("CLIENT", "ID")
        killed += plain.client_kill_filter(_id=connection.read_response())
    return killed


def test_connections_the_server_closed_are_opened_again(
    store: RedisStore, plain: redis.Redis
) -> None:
    created = record()
    store.create(created)
    assert kill_idle_connections(store, plain) == 1
    assert store.write_progress(created.id, Progress.make(1, 2)) is False
    assert kill_idle_connections(store, plain) == 1
    finish = store.create_pipelined(record())
    finish()
    assert kill_idle_connections(store, plain) == 1
    assert len(store.list().records) == 2
    assert busy(store) == 0


def test_a_redis_that_cannot_be_reached_raises_store_error() -> None:
    port = free_port()  # nothing listens there
    store = RedisStore(f"redis://:s3cret@127.0.0.1:{port}/0", prefix="unreachable")
    try:
        with pytest.raises(StoreError) as raised:
            store.create_pipelined(record())()
        assert "s3cret" not in str(raised.value)
        assert f"127.0.0.1:{port}" in str(raised.value)
        with pytest.raises(StoreError):
            store.create(record())
        with pytest.raises(StoreError):
            store.get("x")
        with pytest.raises(StoreError):
            store.cancel_requested("x")
        assert busy(store) == 0
    finally:
        store.close()


def test_a_redis_that_never_answers_raises_store_error_instead_of_hanging() -> None:
    # A socket that accepts connections (the kernel's backlog) and never replies.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        port = server.getsockname()[1]
        store = RedisStore(f"redis://127.0.0.1:{port}/0?socket_timeout=0.3", prefix="hung")
        try:
            started = time.monotonic()
            with pytest.raises(StoreError, match="Timeout"):
                store.write_progress("x", Progress.make(1, 2))
            with pytest.raises(StoreError):
                store.create_pipelined(record())()
            assert time.monotonic() - started < 3
            assert busy(store) == 0
        finally:
            store.close()


def test_short_timeouts_by_default_and_from_the_url() -> None:
    default = RedisStore(URL, prefix="unused")
    tuned = RedisStore(
        URL + "?socket_timeout=0.25&socket_connect_timeout=0.5&max_connections=7", prefix="u"
    )
    try:
        kwargs = default.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (5.0, 3.0)
        kwargs = tuned.client.connection_pool.connection_kwargs
        assert (kwargs["socket_timeout"], kwargs["socket_connect_timeout"]) == (0.25, 0.5)
        assert tuned.client.connection_pool.max_connections == 7
        assert "prefix='unused'" in repr(default)
    finally:
        default.close()
        tuned.close()
    with pytest.raises(ValueError, match="socket_timeout"):
        RedisStore(URL + "?socket_timeout=soon", prefix="u")
    with pytest.raises(ValueError, match="retention"):
        RedisStore(URL, retention=datetime.timedelta(0))
    assert isinstance(create_store("redis://127.0.0.1:6379/15", prefix="u"), RedisStore)


# -- indexes and listing ------------------------------------------------------------------


def fill(store: RedisStore, count: int, plain: redis.Redis) -> list[TaskRecord]:
    start = utcnow() - datetime.timedelta(hours=2)
    made = [
        record(owner="alice" if i % 2 else "bob", at=start + datetime.timedelta(seconds=i))
        for i in range(count)
    ]
    for first in range(0, count, 50):  # 50 creates in flight at a time, one connection each
        finishers = [store.create_pipelined(created) for created in made[first : first + 50]]
        for finish in finishers:
            finish()
    return made


class Monitor:
    """Record the commands Redis runs for this store's keys (MONITOR, in a thread)."""

    def __init__(self, store: RedisStore) -> None:
        self.prefix = store.prefix
        self.client = redis.Redis.from_url(URL)
        self.monitor = self.client.monitor()
        self.commands: list[str] = []
        self.stop = f"stop-{uuid.uuid4().hex}"

    def __enter__(self) -> Monitor:
        self.monitor.__enter__()
        self.thread = threading.Thread(target=self._read)
        self.thread.start()
        return self

    def _read(self) -> None:
        while True:
            command = self.monitor.next_command()["command"]
            if self.stop in command:
                return
            if command.split(" ")[0] != "EVALSHA" and f"{self.prefix}:" in command:
                self.commands.append(command)

    def __exit__(self, *exc: object) -> None:
        with redis.Redis.from_url(URL) as other:
            other.echo(self.stop)
        self.thread.join(timeout=5)
        self.monitor.__exit__()
        self.client.close()

    def count(self, name: str) -> int:
        return sum(1 for command in self.commands if command.split(" ")[0] == name)


def test_a_page_costs_the_page_whatever_the_number_of_records(
    store: RedisStore, plain: redis.Redis
) -> None:
    made = fill(store, 5000, plain)
    for created in made[-40:]:
        running(store, created.id)
    alice_running = [r.id for r in reversed(made[-40:]) if r.owner == "alice"]

    with Monitor(store) as monitor:
        first = store.list(owner="alice", state=TaskState.RUNNING, limit=10)
    assert [r.id for r in first.records] == alice_running[:10]
    assert monitor.count("HGETALL") == 10  # the page, and nothing else
    assert monitor.count("ZREVRANGE") == 1
    assert first.next_cursor is not None

    with Monitor(store) as monitor:
        second = store.list(
            owner="alice", state=TaskState.RUNNING, limit=10, cursor=first.next_cursor
        )
        everyone = store.list(limit=10)
    assert [r.id for r in second.records] == alice_running[10:20]
    assert [r.id for r in everyone.records] == [r.id for r in reversed(made[-10:])]
    assert monitor.count("HGETALL") == 20


def test_a_name_filter_scans_a_bounded_number_of_entries(
    store: RedisStore, plain: redis.Redis
) -> None:
    made = fill(store, 1000, plain)
    rare = record(owner="alice", at=made[0].submitted_at - datetime.timedelta(seconds=1))
    store.create(rare.evolve(name="app.tasks.rare"))
    store.scan_budget = 300
    calls, found = 0, []
    cursor = None
    while True:
        with Monitor(store) as monitor:
            page = store.list(name="app.tasks.rare", limit=10, cursor=cursor)
        assert monitor.count("HGET") <= 310
        calls += 1
        found += [r.id for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert found == [rare.id]
    assert calls == 4  # 1001 entries, 310 at most per call


def test_pages_are_stable_with_ties_and_concurrent_inserts(store: RedisStore) -> None:
    at = utcnow() - datetime.timedelta(minutes=1)
    made = [record(at=at) for _ in range(30)]  # one timestamp for all
    for created in made:
        store.create(created)
    seen: list[str] = []
    cursor = None
    while True:
        page = store.list(owner="alice", limit=7, cursor=cursor)
        seen += [r.id for r in page.records]
        store.create(record())  # newer records arrive between pages
        running(store, page.records[0].id)  # and records change state
        cursor = page.next_cursor
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 30
    assert set(seen) == {r.id for r in made}
    with pytest.raises(ValueError, match="cursor"):
        store.list(cursor="not a cursor")
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=0)


# -- expiry -------------------------------------------------------------------------------


def test_expired_records_leave_every_index(make_store: Any, plain: redis.Redis) -> None:
    store = make_store(retention=datetime.timedelta(milliseconds=300))
    alice = [record(owner="alice") for _ in range(2)]
    nobody = record(owner=None)
    for created in [*alice, nobody]:
        store.create(created)
    running(store, alice[0].id)
    time.sleep(0.5)
    all_index = f"{store.prefix}:idx:all"
    assert plain.zcard(all_index) == 3  # nothing removed them yet
    assert store.list().records == []
    assert plain.zcard(all_index) == 0  # the read dropped them
    assert store.list(owner="alice", state=TaskState.RUNNING).records == []
    assert sum(store.counts().values()) == 0
    assert sum(store.counts(owner="alice").values()) == 0
    assert store.prune() == 0  # counts() pruned already
    assert prefix_keys(plain, store) == set()

    # An id used again after its record expired starts afresh.
    again = alice[1].evolve(owner="bob")
    store.create(again)
    assert store.counts()[TaskState.QUEUED] == 1
    assert [r.id for r in store.list(owner="bob").records] == [again.id]


def test_prune_works_in_batches(make_store: Any, plain: redis.Redis) -> None:
    store = make_store(retention=datetime.timedelta(milliseconds=200))
    store.prune_batch = 7
    for _ in range(30):
        store.create(record())
    time.sleep(0.4)
    assert store.prune() == 30
    assert prefix_keys(plain, store) == set()


def test_state_changes_restart_the_expiry_clock(make_store: Any, plain: redis.Redis) -> None:
    store = make_store(retention=datetime.timedelta(seconds=60))
    created = record()
    store.create(created)
    key = store.record_key(created.id)
    plain.pexpire(key, 5000)
    running(store, created.id)
    assert plain.pttl(key) > 50_000
    plain.pexpire(key, 5000)
    store.write_progress(created.id, Progress.make(1, 2))  # progress does not
    assert plain.pttl(key) <= 5000


# -- reading the meta ---------------------------------------------------------------------


def test_a_retried_task_running_again_does_not_show_the_old_error(store: RedisStore) -> None:
    created = record()
    store.create(created)
    running(store, created.id)
    retry = json.dumps(
        {
            "status": "RETRY",
            "result": {"exc_type": "IOError", "exc_message": ["flaky"], "exc_module": "builtins"},
            "traceback": "Traceback",
            "children": [],
            "task_id": created.id,
        }
    )
    store.save(created.id, celery_state="RETRY", meta=retry)
    retrying = store.get(created.id)
    assert retrying is not None
    assert retrying.error is not None
    running(store, created.id, attempt=2)
    again = store.get(created.id)
    assert again is not None
    assert (again.state, again.error) == (TaskState.RUNNING, None)
    assert store.get_meta(created.id) == ("RETRY", retry)  # what Celery itself would read


def test_the_latest_of_progress_and_custom_state_progress_wins(store: RedisStore) -> None:
    created = record()
    store.create(created)
    running(store, created.id)

    def custom(current: int) -> str:
        return json.dumps(
            {"status": "PROGRESS", "result": {"current": current, "total": 20}, "task_id": "x"}
        )

    def current() -> float | None:
        got = store.get(created.id)
        assert got is not None
        assert got.progress is not None
        return got.progress.current

    store.write_progress(created.id, Progress.make(7, 20))
    assert current() == 7
    store.save(created.id, celery_state="PROGRESS", meta=custom(9))
    assert current() == 9
    store.write_progress(created.id, Progress.make(11, 20))
    assert current() == 11


def test_meta_written_by_celery_alone_is_readable(store: RedisStore, plain: redis.Redis) -> None:
    task_id = str(uuid.uuid4())
    plain.set(f"celery-task-meta-{task_id}", success_meta(task_id, 5), ex=60)
    try:
        assert store.get(task_id) is None  # no record: unknown to the API
        found = store.get_meta(task_id)
        assert found is not None
        assert found[0] == "SUCCESS"
    finally:
        plain.delete(f"celery-task-meta-{task_id}")


# -- drop, processes ----------------------------------------------------------------------


def test_drop_removes_this_store_only(make_store: Any, plain: redis.Redis) -> None:
    globbing = make_store()
    globbing.prefix = f"{globbing.prefix}*"  # glob characters in a prefix match literally
    neighbour = make_store()
    neighbour.prefix = globbing.prefix[:-1] + "x"
    mine, theirs = record(), record()
    globbing.create(mine)
    globbing.save(mine.id, celery_state="SUCCESS", meta=success_meta(mine.id, 1))
    neighbour.create(theirs)
    neighbour.save(theirs.id, celery_state="SUCCESS", meta=success_meta(theirs.id, 1))
    globbing.drop()
    assert prefix_keys(plain, globbing) == set()
    assert not plain.exists(f"celery-task-meta-{mine.id}")
    assert neighbour.get(theirs.id) is not None
    assert plain.exists(f"celery-task-meta-{theirs.id}")


def test_threads_share_one_store(store: RedisStore) -> None:
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(30):
                created = record()
                store.create(created)
                assert store.write_progress(created.id, Progress.make(1, 2)) is False
                got = store.get(created.id)
                assert got is not None
                assert got.id == created.id
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert store.counts()[TaskState.QUEUED] == 240


def test_a_forked_child_opens_its_own_connections(store: RedisStore) -> None:
    parent = record()
    store.create(parent)
    inherited = connections(store)  # kept alive in the child too: no id is reused
    assert inherited
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            for _ in range(200):
                child = record()
                store.create(child)
                got = store.get(child.id)
                assert got is not None
                assert got.id == child.id
            fresh = connections(store)
            assert fresh, "the child made no connection"
            assert not {id(c) for c in fresh} & {id(c) for c in inherited}, "parent's connection"
            assert all(c.pid == os.getpid() for c in [*fresh, *store._idle])
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    for _ in range(200):  # the parent goes on at the same time, on its own sockets
        got = store.get(parent.id)
        assert got is not None
        assert got.id == parent.id
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.counts()[TaskState.QUEUED] == 201
