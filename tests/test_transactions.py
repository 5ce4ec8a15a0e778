"""Enqueue after commit: ``delay_on_commit`` with Flask-SQLAlchemy (SQLite and PostgreSQL)
and with a plain SQLAlchemy session, checked with a real worker reading the committed rows."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Integer, String, create_engine, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from apps.brokers import POSTGRESQL_URL
from conftest import AppFactory, require_postgresql
from flask_tasks import Tasks, TaskState, current_task
from flask_tasks.task import TaskResult
from flask_tasks.testing import start_worker

tasks = Tasks()
db = SQLAlchemy()

# This run's own table: other runs may use the same PostgreSQL database at the same time.
TABLE = f"ft_tx_note_{uuid.uuid4().hex[:10]}"


class Note(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = TABLE
    id = db.Column(Integer, primary_key=True)
    text = db.Column(String(200), nullable=False)


ran: list[str] = []


@tasks.task
def read_note(note_id: int) -> str | None:
    """What the worker finds in the database for this id."""
    note = db.session.get(Note, note_id)
    return None if note is None else str(note.text)


@tasks.task
def mark(label: str) -> str:
    ran.append(label)
    return label


@tasks.task
def whoami() -> dict[str, Any]:
    return {
        "owner": current_task.owner,
        "request_id": current_task.request_id,
        "url_root": current_task.url_root,
    }


@tasks.owner_loader
def owner() -> str | None:
    return request.headers.get("X-User")


ALICE = {"X-User": "alice"}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgresql":
        require_postgresql()
        return POSTGRESQL_URL
    return f"sqlite:///{tmp_path / 'app.sqlite3'}"


@pytest.fixture
def app(make_app: AppFactory, database_url: str) -> Iterator[Flask]:
    app = make_app(SQLALCHEMY_DATABASE_URI=database_url)
    tasks.init_app(app)
    db.init_app(app)
    with app.app_context():
        db.create_all()
    yield app
    with app.app_context():
        db.session.remove()
        db.drop_all()


def one_worker(app: Flask) -> Any:
    """A worker running one task at a time, in the order sent.

    On one thread rather than the ``solo`` pool: ``solo`` sends ``worker_process_init``,
    whose prefork handler forgets this process's pooled database connections unclosed.
    """
    return start_worker(app, concurrency=1)


def wait_for(app: Flask, task_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    record = None
    while time.monotonic() < deadline:
        with app.app_context():
            record = tasks.get(task_id)
        if record is not None and record.finished:
            return record
        time.sleep(0.02)
    raise AssertionError(f"task {task_id} never finished: {record}")


def record_of(app: Flask, task_id: str) -> Any:
    with app.app_context():
        return tasks.get(task_id)


def add_note(content: str) -> int:
    note = Note(text=content)
    db.session.add(note)
    db.session.flush()
    return int(note.id)


def test_the_worker_finds_the_row_the_view_committed(app: Flask) -> None:
    seen_before_commit: list[Any] = []

    @app.post("/notes")
    def create_note() -> Any:
        note_id = add_note(request.get_json()["text"])
        handle = read_note.delay_on_commit(note_id)
        seen_before_commit.append(tasks.get(handle.id))
        db.session.commit()
        return {"id": handle.id}, 202

    with one_worker(app):
        response = app.test_client().post("/notes", json={"text": "hello"}, headers=ALICE)
        assert response.status_code == 202
        record = wait_for(app, response.get_json()["id"])
    assert seen_before_commit == [None]  # not sent, no record, until the commit
    assert record.state is TaskState.SUCCEEDED
    assert record.result == "hello"  # the task found the committed row
    assert record.owner == "alice"


def test_only_committed_work_is_sent(app: Flask) -> None:
    """Rollback, savepoint rollback and released savepoint, seen by a real worker."""
    token = uuid.uuid4().hex[:8]

    def label(name: str) -> str:
        return f"{token}:{name}"

    with one_worker(app), app.app_context():
        add_note("rolled back")
        dropped = mark.delay_on_commit(label("rolled back"))
        db.session.rollback()

        add_note("outer")
        outer = mark.delay_on_commit(label("outer"))
        savepoint = db.session.begin_nested()
        add_note("in a savepoint that rolls back")
        in_rolled_back = mark.delay_on_commit(label("savepoint rolled back"))
        savepoint.rollback()
        with db.session.begin_nested():
            add_note("in a savepoint that is released")
            in_released = mark.delay_on_commit(label("savepoint released"))
        assert record_of(app, in_released.id) is None  # released is not committed
        db.session.commit()

        # The worker runs one task at a time, in order: once this one ran, so did the rest.
        last = mark.delay(label("last"))
        wait_for(app, last.id)
        assert wait_for(app, outer.id).state is TaskState.SUCCEEDED
        assert wait_for(app, in_released.id).state is TaskState.SUCCEEDED
        assert record_of(app, dropped.id) is None
        assert record_of(app, in_rolled_back.id) is None
        assert db.session.scalars(db.select(Note.text).order_by(Note.id)).all() == [
            "outer",
            "in a savepoint that is released",
        ]
    assert [name for name in ran if name.startswith(token)] == [
        label("outer"),
        label("savepoint released"),
        label("last"),
    ]


def test_nested_savepoints(app: Flask) -> None:
    with app.app_context():
        add_note("outer")
        kept = mark.delay_on_commit("kept")
        with db.session.begin_nested():
            add_note("first level")
            first_level = mark.delay_on_commit("first level")
            second = db.session.begin_nested()
            add_note("second level")
            released_inside_rolled_back = mark.delay_on_commit("second level")
            third = db.session.begin_nested()
            in_third = mark.delay_on_commit("third level")
            third.commit()  # released into the second level...
            second.rollback()  # ...which rolls back: both go
        db.session.commit()
        assert record_of(app, kept.id).state is TaskState.QUEUED
        assert record_of(app, first_level.id).state is TaskState.QUEUED
        assert record_of(app, released_inside_rolled_back.id) is None
        assert record_of(app, in_third.id) is None


def test_a_failed_flush_in_a_savepoint_drops_only_its_tasks(app: Flask) -> None:
    with app.app_context():
        taken = add_note("outer")
        kept = mark.delay_on_commit("kept")
        savepoint = db.session.begin_nested()
        db.session.add(Note(id=taken, text="the same id again"))
        dropped = mark.delay_on_commit("dropped")
        with pytest.raises(IntegrityError):
            db.session.flush()
        savepoint.rollback()
        db.session.commit()
        assert record_of(app, kept.id).state is TaskState.QUEUED
        assert record_of(app, dropped.id) is None


def test_an_outer_rollback_drops_released_savepoints(app: Flask) -> None:
    with app.app_context():
        add_note("outer")
        with db.session.begin_nested():
            handle = mark.delay_on_commit("released, then the outer rolls back")
        db.session.rollback()
        db.session.commit()  # a new, empty transaction: nothing left to send
        assert record_of(app, handle.id) is None


def test_the_id_is_known_at_once_and_the_record_exists_from_the_commit(app: Flask) -> None:
    client = app.test_client()
    with app.test_request_context(headers=ALICE):
        add_note("x")
        handle = read_note.delay_on_commit(1)
        assert isinstance(handle, TaskResult)
        assert handle.id and handle.record is None
        assert client.get(f"/tasks/{handle.id}", headers=ALICE).status_code == 404
        db.session.commit()
        response = client.get(f"/tasks/{handle.id}", headers=ALICE)
    assert response.status_code == 200
    assert response.get_json()["state"] == "queued"
    assert response.get_json()["id"] == handle.id


def test_request_data_is_taken_at_the_call_not_at_the_commit(app: Flask) -> None:
    """What delay() takes from the request travels even when the commit comes after it."""
    sent_from = {"X-Request-ID": "req-42", **ALICE}
    with app.app_context():
        with app.test_request_context(base_url="https://shop.example.com/", headers=sent_from):
            add_note("x")
            handle = whoami.delay_on_commit()
        db.session.commit()  # after the request is gone
        record = tasks.get(handle.id)
    assert record is not None
    # OWNER: needs FlaskTask.apply_async to honour the '_flask_tasks_owner' option.
    assert record.owner == "alice"
    with one_worker(app):
        assert wait_for(app, handle.id).result == {
            "owner": "alice",
            "request_id": "req-42",
            "url_root": "https://shop.example.com/",
        }


def test_outside_a_transaction_it_is_sent_at_once(app: Flask) -> None:
    with app.app_context():
        assert not db.session().in_transaction()
        handle = mark.delay_on_commit("at once")
        assert isinstance(handle, TaskResult)
        assert record_of(app, handle.id).state is TaskState.QUEUED

        add_note("x")
        db.session.commit()  # ends the transaction autobegin started
        assert not db.session().in_transaction()
        after = mark.delay_on_commit("after the commit")
        assert record_of(app, after.id).state is TaskState.QUEUED


def test_a_request_that_ends_without_commit_sends_nothing(app: Flask) -> None:
    ids: list[str] = []

    @app.post("/fails")
    def fails() -> Any:
        add_note("never committed")
        ids.append(mark.delay_on_commit("never").id)
        raise RuntimeError("the view failed")

    app.config["PROPAGATE_EXCEPTIONS"] = False
    assert app.test_client().post("/fails").status_code == 500
    assert record_of(app, ids[0]) is None  # the session was removed at teardown


def test_bad_arguments_raise_at_the_call(app: Flask) -> None:
    client = app.test_client()
    with app.test_request_context(headers={"X-User": "bob"}):
        add_note("x")
        with pytest.raises(TypeError, match="datetime is not JSON serializable"):
            mark.delay_on_commit(datetime.now())  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="mark"):
            mark.celery_task.delay_on_commit("a", "b")  # the signature is checked too
        with pytest.raises(ValueError, match="TASKS_MAX_ARGUMENT_BYTES"):
            mark.delay_on_commit("x" * 2_000_000)
        db.session.commit()
    assert client.get("/tasks/", headers={"X-User": "bob"}).get_json()["tasks"] == []


def test_the_celery_task_and_its_options(app: Flask) -> None:
    celery_task = app.extensions["tasks"].celery.tasks[mark.name]
    with app.app_context():
        add_note("x")
        first = celery_task.delay_on_commit("from the Celery task")
        second = mark.apply_async_on_commit(("with options",), task_id="chosen-id", queue="q2")
        assert second.id == "chosen-id"
        db.session.commit()
        assert record_of(app, first.id).state is TaskState.QUEUED
        assert record_of(app, "chosen-id").queue == "q2"


def test_the_arguments_are_taken_at_the_call(app: Flask) -> None:
    @tasks.task
    def echo(values: list[int]) -> list[int]:
        return values

    values = [1]
    with app.app_context():
        add_note("x")
        handle = echo.delay_on_commit(values)
        values.append(2)
        db.session.commit()
        assert record_of(app, handle.id) is not None
    with one_worker(app):
        assert wait_for(app, handle.id).result == [1]


def test_threads_do_not_see_each_others_pending_tasks(app: Flask) -> None:
    registered = threading.Event()
    committed = threading.Event()
    ids: dict[str, str] = {}
    seen_by_rolling_back: list[Any] = []
    errors: list[BaseException] = []

    def rolls_back() -> None:
        try:
            with app.app_context():
                db.session.execute(db.select(Note.id))  # in a transaction; no SQLite write lock
                ids["a"] = mark.delay_on_commit("thread a").id
                registered.set()
                assert committed.wait(10)
                seen_by_rolling_back.append(tasks.get(ids["a"]))  # b's commit sent nothing
                db.session.rollback()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
            registered.set()

    def commits() -> None:
        try:
            assert registered.wait(10)
            with app.app_context():
                add_note("thread b")
                ids["b"] = mark.delay_on_commit("thread b").id
                db.session.commit()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            committed.set()

    threads = [threading.Thread(target=rolls_back), threading.Thread(target=commits)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not errors, errors
    assert seen_by_rolling_back == [None]
    assert record_of(app, ids["a"]) is None
    assert record_of(app, ids["b"]).state is TaskState.QUEUED


def test_eager_mode_runs_at_the_commit_and_sees_the_row(
    make_app: AppFactory, tmp_path: Path
) -> None:
    app = make_app(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'eager.sqlite3'}",
        CELERY_TASK_ALWAYS_EAGER=True,
    )
    tasks.init_app(app)
    db.init_app(app)
    with app.app_context():
        db.create_all()
        note_id = add_note("eager")
        handle = read_note.delay_on_commit(note_id)
        assert record_of(app, handle.id) is None
        db.session.commit()
        record = tasks.get(handle.id)
    assert record is not None
    assert (record.state, record.result) == (TaskState.SUCCEEDED, "eager")


# -- any SQLAlchemy session -------------------------------------------------------------


@pytest.fixture
def plain_app(make_app: AppFactory) -> Flask:
    """An app without Flask-SQLAlchemy."""
    app = make_app()
    tasks.init_app(app)
    return app


def test_a_plain_session(plain_app: Flask, tmp_path: Path) -> None:
    """Also a real worker: it reads the row through an engine of its own."""
    url = f"sqlite:///{tmp_path / 'plain.sqlite3'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE item (id INTEGER PRIMARY KEY, name TEXT)"))

    @tasks.task
    def read_item(item_id: int) -> str | None:
        reader = create_engine(url)
        try:
            with reader.connect() as conn:
                found = conn.execute(
                    text("SELECT name FROM item WHERE id = :id"), {"id": item_id}
                ).scalar()
        finally:
            reader.dispose()
        return None if found is None else str(found)

    try:
        with one_worker(plain_app), plain_app.app_context():
            with Session(engine) as session:
                session.execute(text("INSERT INTO item (id, name) VALUES (7, 'seven')"))
                assert session.in_transaction()
                handle = read_item.apply_async_on_commit((7,), session=session)
                assert record_of(plain_app, handle.id) is None
                with pytest.raises(RuntimeError, match="session="):
                    read_item.delay_on_commit(7)  # no Flask-SQLAlchemy: say how to fix it
                session.commit()
                assert record_of(plain_app, handle.id) is not None

                session.execute(text("SELECT 1"))
                rolled_back = read_item.apply_async_on_commit((7,), session=session)
                session.rollback()
            assert wait_for(plain_app, handle.id).result == "seven"
            assert record_of(plain_app, rolled_back.id) is None
    finally:
        engine.dispose()


def test_a_scoped_session(plain_app: Flask, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'scoped.sqlite3'}")
    scoped = scoped_session(sessionmaker(engine))
    try:
        with plain_app.app_context():
            scoped.execute(text("SELECT 1"))
            handle = mark.apply_async_on_commit(("scoped",), session=scoped)
            assert record_of(plain_app, handle.id) is None
            scoped.commit()
            assert record_of(plain_app, handle.id) is not None
    finally:
        scoped.remove()
        engine.dispose()


def test_a_closed_session_drops_its_tasks(plain_app: Flask, tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'closed.sqlite3'}")
    try:
        with plain_app.app_context():
            session = Session(engine)
            session.execute(text("SELECT 1"))
            handle = mark.apply_async_on_commit(("closed",), session=session)
            session.close()
            session.commit()
            assert record_of(plain_app, handle.id) is None
    finally:
        engine.dispose()


@pytest.mark.postgresql
def test_an_async_session_through_its_sync_session(plain_app: Flask) -> None:
    require_postgresql()
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    async def run() -> tuple[str, str]:
        engine = create_async_engine(POSTGRESQL_URL.replace("+psycopg", "+psycopg_async"))
        try:
            async with AsyncSession(engine) as session:
                await session.execute(text("SELECT 1"))
                sent = mark.apply_async_on_commit(("async",), session=session.sync_session)
                assert record_of(plain_app, sent.id) is None
                await session.commit()
                await session.execute(text("SELECT 1"))
                dropped = mark.apply_async_on_commit(("async",), session=session.sync_session)
                await session.rollback()
        finally:
            await engine.dispose()
        return sent.id, dropped.id

    def in_a_thread_of_its_own() -> tuple[str, str]:
        # A loop of its own, whatever runs in this thread (Playwright's sync API keeps one
        # running for as long as the session's browser lives).
        outcome: list[tuple[str, str]] = []

        def target() -> None:
            with plain_app.app_context():
                outcome.append(asyncio.run(run()))

        thread = threading.Thread(target=target)
        thread.start()
        thread.join(60)
        assert outcome, "the async session did not finish"
        return outcome[0]

    sent_id, dropped_id = in_a_thread_of_its_own()
    assert record_of(plain_app, sent_id).state is TaskState.QUEUED
    assert record_of(plain_app, dropped_id) is None


def test_misuse_is_explained(plain_app: Flask) -> None:
    with pytest.raises(RuntimeError, match="app context"):
        mark.delay_on_commit("outside any app context")
    with plain_app.app_context():
        with pytest.raises(RuntimeError, match=r"db\.init_app\(app\)"):
            mark.delay_on_commit("no Flask-SQLAlchemy")
        with pytest.raises(TypeError, match="Session or scoped_session"):
            mark.apply_async_on_commit(("x",), session="not a session")


def test_a_failed_publish_after_commit_is_logged_not_raised(
    make_app: AppFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path / 'app.sqlite3'}",
        TASKS_BROKER_URL="redis://127.0.0.1:1/0",
        TASKS_PUBLISH_TIMEOUT=0.5,
        TASKS_STORE_URL=f"sqlite:///{tmp_path / 'records.sqlite3'}",
    )
    tasks.init_app(app)
    db.init_app(app)
    with app.app_context(), caplog.at_level(logging.ERROR, logger="flask_tasks"):
        db.create_all()
        add_note("committed anyway")
        handle = mark.delay_on_commit("never sent")
        db.session.commit()  # does not raise: the data is committed
        assert db.session.scalars(db.select(Note.text)).all() == ["committed anyway"]
        assert tasks.get(handle.id) is None
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(handle.id in m and mark.name in m and "not sent" in m for m in messages)
