"""The record store contract, checked on every store: SQLite, PostgreSQL, MariaDB, Redis."""

from __future__ import annotations

import datetime
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from conftest import require_service
from flask_tasks.state import Progress, TaskRecord, TaskState, utcnow
from flask_tasks.store import create_store
from flask_tasks.store.base import CancelOutcome, RecordStore, StartDecision

STORES = ["sqlite", "postgresql", "mariadb", "redis"]


def store_url(kind: str, tmp_path: Any) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'records.sqlite3'}"
    if kind == "postgresql":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        return "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    if kind == "mariadb":
        require_service("MariaDB", "127.0.0.1", 3306)
        return "mysql+pymysql://root@127.0.0.1:3306/test"
    require_service("Redis", "127.0.0.1", 6379)
    return "redis://127.0.0.1:6379/15"


@pytest.fixture(params=STORES)
def make_store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Any]:
    """Open stores of one kind, each under a prefix of its own; drop their data after."""
    url = store_url(request.param, tmp_path)
    opened: list[RecordStore] = []

    def make(retention: datetime.timedelta = datetime.timedelta(days=7)) -> RecordStore:
        prefix = f"t{uuid.uuid4().hex[:10]}"
        store = create_store(url, retention=retention, prefix=prefix)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.drop()
        store.close()


@pytest.fixture
def store(make_store: Any) -> RecordStore:
    result: RecordStore = make_store()
    return result


def new_id() -> str:
    return str(uuid.uuid4())


def record(
    task_id: str | None = None,
    *,
    name: str = "app.tasks.work",
    owner: str | None = "alice",
    at: datetime.datetime | None = None,
) -> TaskRecord:
    now = at or utcnow()
    return TaskRecord(
        id=task_id or new_id(),
        name=name,
        state=TaskState.QUEUED,
        submitted_at=now,
        updated_at=now,
        owner=owner,
        queue="celery",
    )


def success_meta(task_id: str, value: Any) -> str:
    return json.dumps(
        {
            "status": "SUCCESS",
            "result": value,
            "traceback": None,
            "children": [],
            "date_done": utcnow().isoformat(),
            "task_id": task_id,
        }
    )


def failure_meta(task_id: str, status: str = "FAILURE") -> str:
    return json.dumps(
        {
            "status": status,
            "traceback": "Traceback (most recent call last):\n  boom",
            "result": {
                "exc_type": "ValueError",
                "exc_message": ["bad value"],
                "exc_module": "builtins",
            },
            "children": [],
            "date_done": None,
            "task_id": task_id,
        }
    )


def run(store: RecordStore, task_id: str, attempt: int = 1) -> StartDecision:
    return store.mark_running(
        task_id, name="app.tasks.work", attempt=attempt, started_at=utcnow(), queue="celery"
    )


# -- unknown ------------------------------------------------------------------------------


def test_an_unknown_id_is_unknown(store: RecordStore) -> None:
    task_id = new_id()
    assert store.get(task_id) is None
    assert store.get_meta(task_id) is None
    assert store.cancel_requested(task_id) is False
    assert store.request_cancel(task_id) is CancelOutcome.NOT_FOUND
    assert store.write_progress(task_id, Progress.make(1, 2)) is False
    assert store.get(task_id) is None  # a progress write does not create a record


# -- life of a record ---------------------------------------------------------------------


def test_create_and_read_back(store: RecordStore) -> None:
    created = record()
    store.create(created)
    got = store.get(created.id)
    assert got is not None
    assert got.state is TaskState.QUEUED
    assert (got.id, got.name, got.owner, got.queue) == (
        created.id,
        created.name,
        "alice",
        "celery",
    )
    assert abs((got.submitted_at - created.submitted_at).total_seconds()) < 0.001
    assert got.submitted_at.tzinfo is not None
    assert got.started_at is None and got.finished_at is None
    assert got.progress is None and got.result is None and got.error is None
    assert got.cancel_requested is False


def test_create_leaves_an_existing_record_alone(store: RecordStore) -> None:
    first = record(owner="alice")
    store.create(first)
    assert run(store, first.id) is StartDecision.RUN
    store.create(first.evolve(owner="mallory", name="other"))
    got = store.get(first.id)
    assert got is not None
    assert (got.owner, got.name, got.state) == ("alice", first.name, TaskState.RUNNING)


def test_running_progress_and_success(store: RecordStore) -> None:
    created = record()
    store.create(created)
    assert run(store, created.id) is StartDecision.RUN
    running = store.get(created.id)
    assert running is not None
    assert running.state is TaskState.RUNNING
    assert running.attempt == 1
    assert running.started_at is not None

    assert store.write_progress(created.id, Progress.make(3, 10, "row 3")) is False
    got = store.get(created.id)
    assert got is not None and got.progress is not None
    assert got.progress.to_dict() == {
        "current": 3,
        "total": 10,
        "percent": 30.0,
        "message": "row 3",
        "eta_seconds": None,
    }
    assert got.updated_at >= running.updated_at

    meta = success_meta(created.id, {"url": "/reports/1"})
    assert (
        store.save(created.id, celery_state="SUCCESS", meta=meta, progress=Progress.make(10, 10))
        is True
    )
    done = store.get(created.id)
    assert done is not None
    assert done.state is TaskState.SUCCEEDED
    assert done.result == {"url": "/reports/1"}
    assert done.finished_at is not None and done.finished_at >= done.started_at  # type: ignore[operator]
    assert done.progress is not None and done.progress.current == 10
    assert store.get_meta(created.id) == ("SUCCESS", meta)


def test_failure_keeps_type_message_and_traceback(store: RecordStore) -> None:
    created = record()
    store.create(created)
    run(store, created.id)
    assert store.save(created.id, celery_state="FAILURE", meta=failure_meta(created.id))
    got = store.get(created.id)
    assert got is not None and got.error is not None
    assert got.state is TaskState.FAILED
    assert (got.error.type, got.error.message) == ("ValueError", "bad value")
    assert got.error.traceback is not None and "boom" in got.error.traceback
    assert got.result is None


def test_custom_update_state_is_running_with_its_meta(store: RecordStore) -> None:
    created = record()
    store.create(created)
    run(store, created.id)
    meta = json.dumps(
        {
            "status": "PROGRESS",
            "result": {"current": 5, "total": 20},
            "traceback": None,
            "children": [],
            "task_id": created.id,
        }
    )
    store.save(created.id, celery_state="PROGRESS", meta=meta)
    got = store.get(created.id)
    assert got is not None
    assert got.state is TaskState.RUNNING
    assert got.celery_state == "PROGRESS"
    assert got.meta == {"current": 5, "total": 20}
    assert got.progress is not None and got.progress.percent == 25.0


def test_retry_then_second_attempt(store: RecordStore) -> None:
    created = record()
    store.create(created)
    run(store, created.id)
    first = store.get(created.id)
    store.save(created.id, celery_state="RETRY", meta=failure_meta(created.id, "RETRY"))
    retrying = store.get(created.id)
    assert retrying is not None and retrying.state is TaskState.RETRYING
    assert retrying.error is not None and retrying.error.type == "ValueError"
    assert run(store, created.id, attempt=2) is StartDecision.RUN
    again = store.get(created.id)
    assert again is not None and first is not None
    assert again.state is TaskState.RUNNING
    assert again.attempt == 2
    assert again.started_at == first.started_at


def test_a_task_sent_without_a_record_gets_one(store: RecordStore) -> None:
    """send_task() by name, beat, or a store that was down at delay() time."""
    task_id = new_id()
    assert run(store, task_id) is StartDecision.RUN
    got = store.get(task_id)
    assert got is not None and got.state is TaskState.RUNNING and got.name == "app.tasks.work"
    other = new_id()
    assert store.save(other, celery_state="SUCCESS", meta=success_meta(other, 1), name="x.y")
    saved = store.get(other)
    assert saved is not None and saved.state is TaskState.SUCCEEDED and saved.result == 1


# -- final is final -----------------------------------------------------------------------


def test_a_finished_record_never_moves_back(store: RecordStore) -> None:
    created = record()
    store.create(created)
    run(store, created.id)
    store.save(
        created.id,
        celery_state="SUCCESS",
        meta=success_meta(created.id, 42),
        progress=Progress.make(10, 10),
    )
    before = store.get(created.id)
    assert store.write_progress(created.id, Progress.make(1, 10)) is False
    assert run(store, created.id, attempt=2) is StartDecision.SKIP
    assert store.save(created.id, celery_state="FAILURE", meta=failure_meta(created.id)) is False
    assert (
        store.save(created.id, celery_state="RETRY", meta=failure_meta(created.id, "RETRY"))
        is False
    )
    assert store.request_cancel(created.id) is CancelOutcome.FINISHED
    after = store.get(created.id)
    assert after == before
    assert store.get_meta(created.id) == ("SUCCESS", success_meta(created.id, 42)) or (
        store.get_meta(created.id) is not None and store.get_meta(created.id)[0] == "SUCCESS"  # type: ignore[index]
    )


def test_late_writes_from_many_threads_never_undo_the_end(store: RecordStore) -> None:
    created = record()
    store.create(created)
    run(store, created.id)
    stop = threading.Event()
    errors: list[BaseException] = []

    def hammer() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                store.write_progress(created.id, Progress.make(i, 1000))
                if i % 5 == 0:
                    run(store, created.id, attempt=2)
                    store.save(
                        created.id, celery_state="RETRY", meta=failure_meta(created.id, "RETRY")
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    store.save(created.id, celery_state="SUCCESS", meta=success_meta(created.id, "done"))
    time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join()
    assert not errors
    got = store.get(created.id)
    assert got is not None
    assert got.state is TaskState.SUCCEEDED
    assert got.result == "done"


# -- cancellation -------------------------------------------------------------------------


def test_cancelling_a_queued_task_ends_it_at_once(store: RecordStore) -> None:
    created = record()
    store.create(created)
    assert store.request_cancel(created.id) is CancelOutcome.CANCELLED
    got = store.get(created.id)
    assert got is not None
    assert got.state is TaskState.CANCELLED and got.cancel_requested and got.finished_at
    assert run(store, created.id) is StartDecision.SKIP
    assert store.request_cancel(created.id) is CancelOutcome.FINISHED


def test_cancelling_a_running_task_sets_a_flag_progress_cannot_erase(store: RecordStore) -> None:
    created = record()
    store.create(created)
    run(store, created.id)
    assert store.request_cancel(created.id) is CancelOutcome.REQUESTED
    assert store.cancel_requested(created.id) is True
    assert store.write_progress(created.id, Progress.make(1, 2)) is True
    assert store.write_progress(created.id, Progress.make(2, 2)) is True
    custom = json.dumps(
        {
            "status": "PROGRESS",
            "result": {"current": 1},
            "traceback": None,
            "children": [],
            "task_id": created.id,
        }
    )
    store.save(created.id, celery_state="PROGRESS", meta=custom)
    got = store.get(created.id)
    assert got is not None
    assert got.cancel_requested is True
    assert got.state is TaskState.RUNNING
    revoked = json.dumps(
        {
            "status": "REVOKED",
            "result": {
                "exc_type": "TaskCancelled",
                "exc_message": ["cancelled"],
                "exc_module": "flask_tasks",
            },
            "traceback": None,
            "children": [],
            "task_id": created.id,
        }
    )
    store.save(created.id, celery_state="REVOKED", meta=revoked)
    ended = store.get(created.id)
    assert ended is not None and ended.state is TaskState.CANCELLED and ended.cancel_requested


# -- listing ------------------------------------------------------------------------------


def fill(store: RecordStore, count: int, **kwargs: Any) -> list[TaskRecord]:
    start = utcnow() - datetime.timedelta(minutes=10)
    made = []
    for i in range(count):
        created = record(at=start + datetime.timedelta(seconds=i), **kwargs)
        store.create(created)
        made.append(created)
    return made


def test_list_newest_first_in_pages_that_cover_everything_once(store: RecordStore) -> None:
    made = fill(store, 23, owner="alice")
    fill(store, 5, owner="bob")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = store.list(owner="alice", limit=10, cursor=cursor)
        pages += 1
        assert len(page.records) <= 10
        seen.extend(r.id for r in page.records)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 3
    assert seen == [r.id for r in reversed(made)]


def test_list_by_owner_state_and_name(store: RecordStore) -> None:
    alice = fill(store, 6, owner="alice")
    fill(store, 4, owner="bob", name="app.tasks.other")
    for created in alice[:2]:
        run(store, created.id)
    store.save(alice[2].id, celery_state="SUCCESS", meta=success_meta(alice[2].id, 1))

    running = store.list(owner="alice", state=TaskState.RUNNING)
    assert [r.id for r in running.records] == [alice[1].id, alice[0].id]
    assert all(r.owner == "alice" for r in store.list(owner="alice").records)
    assert len(store.list(owner="alice").records) == 6
    assert len(store.list(owner="bob").records) == 4
    assert len(store.list().records) == 10
    other = store.list(name="app.tasks.other")
    assert len(other.records) == 4
    assert {r.owner for r in other.records} == {"bob"}
    queued_alice = store.list(owner="alice", state=TaskState.QUEUED, name="app.tasks.work")
    assert len(queued_alice.records) == 3
    assert store.list(owner="nobody").records == []


def test_records_without_owner_are_listed_only_globally(store: RecordStore) -> None:
    anonymous = fill(store, 2, owner=None)
    assert store.list(owner="alice").records == []
    assert {r.id for r in store.list().records} == {r.id for r in anonymous}


def test_counts_per_state(store: RecordStore) -> None:
    made = fill(store, 5, owner="alice")
    fill(store, 2, owner="bob")
    run(store, made[0].id)
    store.save(made[1].id, celery_state="FAILURE", meta=failure_meta(made[1].id))
    store.request_cancel(made[2].id)
    counts = store.counts()
    assert counts[TaskState.QUEUED] == 4
    assert counts[TaskState.RUNNING] == 1
    assert counts[TaskState.FAILED] == 1
    assert counts[TaskState.CANCELLED] == 1
    assert counts[TaskState.SUCCEEDED] == 0
    assert store.counts(owner="alice")[TaskState.QUEUED] == 2


# -- removal and expiry -------------------------------------------------------------------


def test_delete(store: RecordStore) -> None:
    created = record()
    store.create(created)
    store.delete(created.id)
    assert store.get(created.id) is None
    assert store.list(owner="alice").records == []
    assert store.counts()[TaskState.QUEUED] == 0


def test_purge_finished(store: RecordStore) -> None:
    made = fill(store, 4)
    run(store, made[0].id)
    for created in made[1:3]:
        store.save(created.id, celery_state="SUCCESS", meta=success_meta(created.id, 1))
    assert store.purge(finished_before=utcnow() - datetime.timedelta(hours=1)) == 0
    assert store.purge(finished_before=utcnow() + datetime.timedelta(seconds=1)) == 2
    assert {r.id for r in store.list().records} == {made[0].id, made[3].id}
    assert store.purge() == 0


def test_records_expire_after_the_retention(make_store: Any) -> None:
    store = make_store(retention=datetime.timedelta(seconds=1))
    created = record()
    store.create(created)
    store.save(created.id, celery_state="SUCCESS", meta=success_meta(created.id, 1))
    assert store.get(created.id) is not None
    time.sleep(2.2)
    assert store.get(created.id) is None
    assert store.get_meta(created.id) is None
    assert store.list().records == []
    store.prune()
    assert store.counts()[TaskState.SUCCEEDED] == 0
