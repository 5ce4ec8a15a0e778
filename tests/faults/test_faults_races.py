"""Late writes racing a task's end, and the pieces that find lost workers."""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from apps import faults
from conftest import require_service
from flask_tasks._heartbeat import Heartbeats, redis_visibility_timeout, sweep
from flask_tasks.state import Progress, TaskRecord, TaskState, utcnow
from flask_tasks.store import create_store
from flask_tasks.store.base import RecordStore, StartDecision, StoreError

pytestmark = pytest.mark.faults

STORES = ["sqlite", "postgresql", "redis"]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RecordStore]:
    kind = request.param
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'records.sqlite3'}"
    elif kind == "postgresql":
        require_service("PostgreSQL", "127.0.0.1", 5432)
        url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    else:
        require_service("Redis", "127.0.0.1", 6379)
        url = "redis://127.0.0.1:6379/15"
    opened = create_store(url, prefix=f"f{uuid.uuid4().hex[:10]}")
    yield opened
    opened.drop()
    opened.close()


@pytest.fixture
def beats(store: RecordStore) -> Iterator[Heartbeats]:
    """A registry of its own, whose thread is stopped before ``store`` closes (a beat still
    running against a closed store would leave a connection behind)."""
    registry = Heartbeats()
    yield registry
    registry.stop()


def queued(name: str = "apps.faults.once") -> TaskRecord:
    now = utcnow()
    return TaskRecord(
        id=str(uuid.uuid4()), name=name, state=TaskState.QUEUED, submitted_at=now, updated_at=now
    )


def meta(task_id: str, status: str, result: Any) -> str:
    return json.dumps({"status": status, "result": result, "traceback": None, "task_id": task_id})


def test_the_final_state_wins_every_race(store: RecordStore) -> None:
    """For 20 records at once, one thread writes the end (``SUCCESS``) while seven others
    fire late progress, ``running``, ``RETRY``, custom-state and heartbeat writes, all
    released together by a barrier, several rounds: every record ends ``succeeded`` with
    its own result, and reading it twice gives the same record (nothing moved after)."""
    made = [queued() for _ in range(20)]
    for rec in made:
        store.create(rec)
        store.mark_running(rec.id, name=rec.name, attempt=1, started_at=utcnow())
    writers = 8
    barrier = threading.Barrier(writers)
    errors: list[BaseException] = []

    def late(n: int) -> None:
        try:
            for rec in made:
                barrier.wait(30)
                for round_ in range(5):
                    if n == 0 and round_ == 2:
                        store.save(
                            rec.id,
                            celery_state="SUCCESS",
                            meta=meta(rec.id, "SUCCESS", rec.id),
                            progress=Progress.make(10, 10),
                        )
                    elif n % 4 == 1:
                        store.write_progress(rec.id, Progress.make(round_, 10))
                    elif n % 4 == 2:
                        store.mark_running(rec.id, name=rec.name, attempt=2, started_at=utcnow())
                    elif n % 4 == 3:
                        store.save(rec.id, celery_state="RETRY", meta=meta(rec.id, "RETRY", None))
                    else:
                        store.save(
                            rec.id,
                            celery_state="PROGRESS",
                            meta=meta(rec.id, "PROGRESS", {"current": 1, "total": 2}),
                        )
                        store.touch_running([rec.id])
        except BaseException as exc:  # reported below
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=late, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    for rec in made:
        first = store.get(rec.id)
        assert first is not None
        assert first.state is TaskState.SUCCEEDED, first
        assert first.result == rec.id
        assert first.celery_state == "SUCCESS"
        assert first.progress == Progress.make(10, 10)
        # late writes after the end change nothing either
        store.write_progress(rec.id, Progress.make(1, 10))
        store.touch_running([rec.id])
        assert (
            store.mark_running(rec.id, name=rec.name, attempt=3, started_at=utcnow())
            is StartDecision.SKIP
        )
        assert store.get(rec.id) == first


def test_heartbeats_touch_running_records_only(store: RecordStore, beats: Heartbeats) -> None:
    running, waiting = queued(), queued()
    store.create(running)
    store.create(waiting)
    store.mark_running(running.id, name=running.name, attempt=1, started_at=utcnow())
    before = store.get(running.id)
    before_waiting = store.get(waiting.id)
    assert before is not None and before_waiting is not None
    beats.add(store, running.id, timeout=60)
    beats.add(store, waiting.id, timeout=60)
    beats.beat()
    after = store.get(running.id)
    assert after is not None and after.updated_at > before.updated_at
    assert after.state is TaskState.RUNNING and after.attempt == 1
    assert store.get(waiting.id) == before_waiting
    beats.remove(store, running.id)
    beats.remove(store, waiting.id)


def test_a_final_write_that_failed_is_written_again(store: RecordStore, beats: Heartbeats) -> None:
    rec = queued()
    store.create(rec)
    store.mark_running(rec.id, name=rec.name, attempt=1, started_at=utcnow())
    down = True

    def write() -> bool:
        if down:
            raise StoreError("down")
        return store.save(rec.id, celery_state="SUCCESS", meta=meta(rec.id, "SUCCESS", 1))

    beats.retry_later(store, rec.id, write, timeout=3600)
    beats.beat()
    assert beats.pending() == 1
    down = False
    beats.beat()
    assert beats.pending() == 0
    got = store.get(rec.id)
    assert got is not None and got.state is TaskState.SUCCEEDED


def test_the_sweep_ends_lost_tasks_that_ack_early(make_app: Any) -> None:
    """A running record with a stale heartbeat is marked ``failed`` (WorkerLostError) for
    a task that acks early; one of an idempotent (acks-late) task is left to the broker,
    and a fresh one to its worker."""
    app = make_app("embedded", TASKS_WORKER_LOST_TIMEOUT=5)
    faults.tasks.init_app(app)
    celery = app.extensions["tasks"].celery
    store = app.extensions["tasks"].store
    lost, idempotent = queued(), queued(faults.again.name)
    for rec in (lost, idempotent):
        store.create(rec)
        store.mark_running(rec.id, name=rec.name, attempt=1, started_at=utcnow())
    assert sweep(celery, 5) == 0  # heartbeats are fresh
    assert sweep(celery, 5, now=utcnow() + datetime.timedelta(seconds=10)) == 1
    got = store.get(lost.id)
    assert got is not None and got.state is TaskState.FAILED
    assert got.error is not None and got.error.type == "WorkerLostError"
    assert "not idempotent" in got.error.message
    idem = store.get(idempotent.id)
    assert idem is not None and idem.state is TaskState.RUNNING


def test_visibility_timeout_follows_the_longest_time_limit(make_app: Any) -> None:
    app = make_app("redis")
    faults.tasks.init_app(app)
    celery = app.extensions["tasks"].celery
    assert redis_visibility_timeout(celery) is None  # no limit: Kombu's hour stays
    celery.conf.task_time_limit = 7200
    assert redis_visibility_timeout(celery) == 7200 + 300
    celery.conf.broker_transport_options = {"visibility_timeout": 60}
    assert redis_visibility_timeout(celery) is None  # set explicitly: left alone


def test_idempotent_sets_late_acks_and_the_bound(make_app: Any) -> None:
    app = make_app("embedded")
    faults.tasks.init_app(app)
    with app.app_context():
        again, once = faults.again.celery_task, faults.once.celery_task
    assert again.idempotent and again.acks_late and again.reject_on_worker_lost
    assert again.max_retries == 3
    assert getattr(again, "retry_on_worker_lost", True)
    assert not once.idempotent and not once.acks_late
    with pytest.raises(TypeError, match="idempotent"):
        faults.tasks.task(idempotent="yes")(lambda: None)
