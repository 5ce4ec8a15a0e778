"""flask tasks status | list | cancel | purge."""

from __future__ import annotations

import json

import pytest
from flask import Flask

from conftest import AppFactory
from flask_tasks import Tasks

tasks = Tasks()


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
def explode() -> None:
    raise KeyError("missing")


@pytest.fixture
def app(make_app: AppFactory, broker: str) -> Flask:
    """Eager tasks, with the record store each broker kind brings: SQLite, Redis, PostgreSQL."""
    app = make_app(
        broker, CELERY_TASK_ALWAYS_EAGER=True, CELERY_TASK_EAGER_PROPAGATES_EXCEPTIONS=False
    )
    tasks.init_app(app)
    return app


def run(app: Flask, *args: str) -> tuple[int, str]:
    result = app.test_cli_runner().invoke(args=["tasks", *args])
    return result.exit_code, result.output


def test_status(app: Flask) -> None:
    with app.app_context():
        task_id = add.delay(2, 3).id
        failed_id = explode.delay().id
    code, out = run(app, "status", task_id)
    assert code == 0
    assert "succeeded" in out and "result  5" in out
    code, out = run(app, "status", task_id, "--json")
    assert code == 0 and json.loads(out)["result"] == 5
    code, out = run(app, "status", failed_id)
    assert "KeyError: missing" in out
    code, out = run(app, "status", "nope")
    assert code == 1 and "No task 'nope'" in out


def test_list_and_filters(app: Flask) -> None:
    with app.app_context():
        ids = [add.delay(i, i).id for i in range(3)]
        failed = explode.delay().id
    code, out = run(app, "list")
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:2] == ["id", "state"]
    assert [line.split()[0] for line in lines[1:]] == [failed, *reversed(ids)]
    code, out = run(app, "list", "--state", "failed", "--json")
    assert [json.loads(line)["id"] for line in out.splitlines()] == [failed]
    code, out = run(app, "list", "--name", add.name, "--limit", "2")
    assert len(out.strip().splitlines()) == 3
    code, out = run(app, "list", "--state", "bogus")
    assert code == 2


def test_cancel(make_app: AppFactory, broker: str) -> None:
    app = make_app(broker)  # queued, no worker
    tasks.init_app(app)
    with app.app_context():
        task_id = add.delay(1, 1).id
    code, out = run(app, "cancel", task_id)
    assert code == 0 and "cancelled, it will not run" in out
    code, out = run(app, "cancel", task_id)
    assert code == 1 and "already ended" in out
    code, out = run(app, "cancel", "nope")
    assert code == 1


def test_purge(app: Flask) -> None:
    with app.app_context():
        for i in range(3):
            add.delay(i, i)
    code, out = run(app, "purge", "--finished-before", "1h", "--yes")
    assert code == 0 and "Deleted 0 records." in out
    code, out = run(app, "purge", "--yes")
    assert code == 0 and "Deleted 3 records." in out
    code, out = run(app, "list")
    assert "No tasks." in out
    code, out = run(app, "purge", "--finished-before", "soon", "--yes")
    assert code == 2
