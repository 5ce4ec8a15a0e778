"""Task records through a real worker: on the embedded default (SQLite store), Redis (Redis
store) and RabbitMQ (PostgreSQL store)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from celery import chain, group
from celery.exceptions import TaskRevokedError
from flask import Flask

from conftest import AppFactory
from flask_tasks import (
    BrokerUnavailable,
    CancelOutcome,
    TaskCancelled,
    Tasks,
    TaskState,
    is_cancelled,
    progress,
)
from flask_tasks.testing import start_worker

tasks = Tasks()


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
def fail(message: str) -> None:
    raise ValueError(message)


@tasks.task
def count(n: int) -> int:
    """A tight loop reporting progress on every step."""
    for i in range(n):
        progress(i + 1, n, message=f"item {i + 1}")
    return n


@tasks.task
def steps(total: int, delay: float) -> int:
    for i in range(total):
        progress.step(message=f"step {i + 1}")
        time.sleep(delay)
    return total


@tasks.task
def touch(path: str) -> None:
    Path(path).write_text("ran")


@tasks.task
def wait_for_cancel(path: str) -> str:
    """Code without progress reports: polls is_cancelled()."""
    Path(path).write_text("started")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if is_cancelled():
            raise TaskCancelled()
        time.sleep(0.02)
    return "not cancelled"


@tasks.task(bind=True)
def old_style(self: Any) -> str:
    """Seed 000: update_state with a custom state."""
    self.update_state(state="PROGRESS", meta={"current": 40, "total": 100})
    time.sleep(0.5)
    return "done"


@tasks.task(ignore_result=True)
def ignored() -> int:
    return 1


attempts: dict[str, int] = {}


@tasks.task(bind=True, max_retries=3)
def retry_once(self: Any, key: str) -> int:
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] == 1:
        progress(1, 2)
        raise self.retry(countdown=0)
    return attempts[key]


def wait_for(app: Flask, task_id: str, done: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        with app.app_context():
            record = tasks.get(task_id)
        if record is not None and done(record):
            return record
        time.sleep(0.02)
    raise AssertionError(f"record of {task_id} never got there: {record}")


def finished(record: Any) -> bool:
    return bool(record.finished)


@pytest.fixture
def app(make_app: AppFactory, broker: str) -> Flask:
    app = make_app(broker, TASKS_PROGRESS_INTERVAL=0.05)
    tasks.init_app(app)

    @tasks.owner_loader
    def owner() -> str:
        from flask import request

        return request.headers.get("X-User", "")

    return app


def test_a_record_is_queued_before_any_worker_runs(app: Flask) -> None:
    with app.test_request_context(headers={"X-User": "alice"}):
        handle = add.delay(1, 2)
        record = tasks.get(handle.id)
    assert record is not None
    assert record.state is TaskState.QUEUED
    assert (record.name, record.owner) == (add.name, "alice")
    assert record.queue
    assert handle.record == record


def test_success_with_progress_and_result(app: Flask) -> None:
    with app.app_context():
        handle = count.delay(100_000)
    with start_worker(app):
        record = wait_for(app, handle.id, finished)
        assert handle.get(timeout=10, interval=0.01) == 100_000
    assert record.state is TaskState.SUCCEEDED
    assert record.result == 100_000
    assert record.attempt == 1
    assert record.started_at is not None and record.finished_at >= record.started_at
    # a million-call loop writes only a few times, and the last value always lands
    assert record.progress is not None
    assert (record.progress.current, record.progress.total) == (100_000, 100_000)
    assert record.progress.percent == 100.0
    assert record.progress.message == "item 100000"


def test_progress_is_visible_while_running(app: Flask) -> None:
    with app.app_context():
        handle = steps.delay(10, 0.1)
    with start_worker(app):
        running = wait_for(app, handle.id, lambda r: r.progress is not None)
        assert running.state is TaskState.RUNNING
        assert running.progress.total is None and running.progress.current >= 1
        done = wait_for(app, handle.id, finished)
    assert done.progress.current == 10
    assert done.progress.message == "step 10"


def test_failure_is_recorded_with_type_and_message(app: Flask) -> None:
    with app.app_context():
        handle = fail.delay("bad input")
    with start_worker(app):
        record = wait_for(app, handle.id, finished)
        with pytest.raises(ValueError, match="bad input"):
            handle.get(timeout=10, interval=0.01)
    assert record.state is TaskState.FAILED
    assert record.error is not None
    assert (record.error.type, record.error.message) == ("ValueError", "bad input")
    assert "Traceback" in (record.error.traceback or "")


def test_cancelling_a_queued_task_means_it_never_starts(app: Flask, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    with app.app_context():
        handle = touch.delay(str(marker))
        assert handle.cancel() is CancelOutcome.CANCELLED
        assert tasks.get(handle.id).state is TaskState.CANCELLED  # type: ignore[union-attr]
        after = add.delay(1, 1)
    with start_worker(app):
        wait_for(app, after.id, finished)  # the worker got past the cancelled one
    assert not marker.exists()
    record = wait_for(app, handle.id, finished)
    assert record.state is TaskState.CANCELLED


def test_cancelling_a_running_task_stops_it_at_its_next_progress(app: Flask) -> None:
    with app.app_context():
        handle = steps.delay(200, 0.05)
    with start_worker(app):
        wait_for(app, handle.id, lambda r: r.progress is not None)
        with app.app_context():
            assert tasks.cancel(handle.id) is CancelOutcome.REQUESTED
        record = wait_for(app, handle.id, finished)
        with pytest.raises(TaskRevokedError):
            handle.get(timeout=10, interval=0.01)
    assert record.state is TaskState.CANCELLED
    assert record.cancel_requested
    assert record.progress.current < 200
    with app.app_context():
        assert tasks.cancel(handle.id) is CancelOutcome.FINISHED


def test_is_cancelled_for_code_without_progress(app: Flask, tmp_path: Path) -> None:
    started = tmp_path / "started"
    with app.app_context():
        handle = wait_for_cancel.delay(str(started))
    with start_worker(app):
        deadline = time.monotonic() + 20
        while not started.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with app.app_context():
            assert handle.cancel() is CancelOutcome.REQUESTED
        record = wait_for(app, handle.id, finished)
    assert record.state is TaskState.CANCELLED


def test_custom_update_state_shows_as_running_with_its_meta(app: Flask) -> None:
    with app.app_context():
        handle = old_style.delay()
    with start_worker(app):
        running = wait_for(app, handle.id, lambda r: r.meta is not None)
        done = wait_for(app, handle.id, finished)
    assert running.state is TaskState.RUNNING
    assert running.celery_state == "PROGRESS"
    assert running.meta == {"current": 40, "total": 100}
    assert running.progress.percent == 40.0
    assert done.state is TaskState.SUCCEEDED and done.result == "done"


def test_a_task_that_ignores_its_result_still_ends(app: Flask) -> None:
    with app.app_context():
        handle = ignored.delay()
    with start_worker(app):
        record = wait_for(app, handle.id, finished)
    assert record.state is TaskState.SUCCEEDED


def test_retry_is_recorded_and_the_second_attempt_succeeds(app: Flask) -> None:
    key = str(time.monotonic())
    with app.app_context():
        handle = retry_once.delay(key)
    with start_worker(app):
        record = wait_for(app, handle.id, finished)
    assert record.state is TaskState.SUCCEEDED
    assert record.result == 2
    assert record.attempt == 2


def test_canvas_keeps_working(app: Flask) -> None:
    with start_worker(app), app.app_context():
        assert chain(add.s(1, 2), add.s(10))().get(timeout=20, interval=0.02) == 13
        assert group(add.s(i, i) for i in range(4))().get(timeout=20, interval=0.02) == [
            0,
            2,
            4,
            6,
        ]


def test_unknown_ids_are_unknown(app: Flask) -> None:
    with app.app_context():
        assert tasks.get("no-such-task") is None
        assert tasks.cancel("no-such-task") is CancelOutcome.NOT_FOUND
        # Celery's own view is unchanged: PENDING for anything it does not know
        assert add.AsyncResult("no-such-task").state == "PENDING"


def test_a_failed_publish_leaves_no_record(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(
        TASKS_BROKER_URL="redis://127.0.0.1:1/0",
        TASKS_PUBLISH_TIMEOUT=0.5,
        TASKS_STORE_URL=f"sqlite:///{tmp_path / 'records.sqlite3'}",
    )
    tasks.init_app(app)
    with app.app_context(), pytest.raises(BrokerUnavailable):
        add.apply_async((1, 2), task_id="never-sent")
    with app.app_context():
        assert tasks.get("never-sent") is None


def test_a_store_that_is_down_never_fails_the_task(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app(TASKS_STORE_URL="redis://127.0.0.1:1/0")
    tasks.init_app(app)
    marker = tmp_path / "ran"
    with app.app_context():
        touch.delay(str(marker))
    with start_worker(app):
        deadline = time.monotonic() + 20
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    assert marker.read_text() == "ran"


def test_eager_mode_writes_records(make_app: AppFactory) -> None:
    app = make_app(CELERY_TASK_ALWAYS_EAGER=True)
    tasks.init_app(app)
    with app.app_context():
        handle = count.delay(10)
        record = tasks.get(handle.id)
        failed = fail.delay("eager failure")
        failed_record = tasks.get(failed.id)
    assert record is not None and record.state is TaskState.SUCCEEDED
    assert record.progress is not None and record.progress.current == 10
    assert failed_record is not None and failed_record.state is TaskState.FAILED


def test_eager_failures_that_propagate_keep_their_record(make_app: AppFactory) -> None:
    app = make_app(CELERY_TASK_ALWAYS_EAGER=True, CELERY_TASK_EAGER_PROPAGATES_EXCEPTIONS=True)
    tasks.init_app(app)
    with app.app_context():
        with pytest.raises(ValueError, match="eager and loud"):
            fail.apply_async(("eager and loud",), task_id="eager-loud")
        record = tasks.get("eager-loud")
    assert record is not None
    assert record.state is TaskState.FAILED
