"""Workers and beat as separate processes: the CLI, every pool, forks."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from apps import factory
from conftest import close_app, require_postgresql
from flask_tasks.testing import start_worker
from workers import celery, flask, process, subprocess_env

APP = "apps.factory:create_app"


@pytest.fixture
def factory_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Set the FT_* variables apps.factory reads, here and for subprocesses."""

    def configure(broker: str = "embedded", **extra: str) -> dict[str, str]:
        values = {
            "FT_BROKER": broker,
            "FT_QUEUE": f"test-{uuid.uuid4().hex[:12]}",
            "FT_INSTANCE": str(tmp_path / "instance"),
            **extra,
        }
        for key, value in values.items():
            monkeypatch.setenv(key, value)
        return subprocess_env(**values)

    yield configure
    while made:
        close_app(made.pop())


made: list[Flask] = []


def make_factory_app() -> Flask:
    """apps.factory's app, in this process (closed when the test ends)."""
    app = factory.create_app()
    made.append(app)
    return app


def collect(app: Flask, count: int = 4) -> list[dict[str, Any]]:
    with app.app_context():
        handles = [factory.where.delay() for _ in range(count)]
        return [h.get(timeout=30, interval=0.02) for h in handles]


def test_flask_tasks_worker_on_every_broker(broker: str, factory_env: Any) -> None:
    env = factory_env(broker)
    app = make_factory_app()
    with process(flask("--app", APP, "tasks", "worker", "-l", "info", "-c", "2"), env, "ready."):
        results = collect(app)
    assert all(r["pid"] != os.getpid() for r in results)
    assert all(r["has_app_context"] and r["marker"] == "from-factory" for r in results)
    # each task gets a context of its own, even in a long-lived pool process
    assert all(r["runs_in_this_context"] == 1 for r in results)


@pytest.mark.parametrize("pool", ["prefork", "threads", "solo"])
def test_every_pool_runs_tasks_in_the_app_context(pool: str, factory_env: Any) -> None:
    env = factory_env()
    app = make_factory_app()
    argv = flask("--app", APP, "tasks", "worker", "--pool", pool, "-c", "2", "-l", "info")
    with process(argv, env, "ready.") as worker:
        results = collect(app)
    banner = {"prefork": "(prefork)", "threads": "(thread)", "solo": "(solo)"}[pool]
    assert banner in worker.output
    assert all(r["has_app_context"] and r["app"] == "factory_app" for r in results)
    assert all(r["runs_in_this_context"] == 1 for r in results)


def test_worker_help_is_celery_worker_help(factory_env: Any) -> None:
    env = factory_env()
    with process(flask("--app", APP, "tasks", "worker", "--help"), env) as proc:
        proc.proc.wait(30)
    assert "--concurrency" in proc.output
    assert "--pool" in proc.output


def test_official_make_celery_entry_point_keeps_working(broker: str, factory_env: Any) -> None:
    env = factory_env(broker)
    app = make_factory_app()
    with process(celery("-A", "apps.make_celery", "worker", "-l", "info"), env, "ready."):
        results = collect(app, 2)
    assert all(r["marker"] == "from-factory" for r in results)


def test_a_process_wide_app_context_does_not_leak_into_tasks(factory_env: Any) -> None:
    """Seed 003 pushes an app context at import; tasks still get one each."""
    env = factory_env()
    app = make_factory_app()
    argv = celery("-A", "apps.global_context.celery", "worker", "--pool", "prefork", "-c", "1")
    with process([*argv, "-l", "info"], env, "ready."):
        results = collect(app, 5)
    assert [r["runs_in_this_context"] for r in results] == [1] * 5


@pytest.mark.postgresql
def test_prefork_children_do_not_reuse_the_parents_connections(factory_env: Any) -> None:
    require_postgresql()
    from apps.brokers import POSTGRESQL_URL

    env = factory_env(FT_DATABASE_URL=POSTGRESQL_URL)
    app = make_factory_app()
    argv = flask("--app", APP, "tasks", "worker", "--pool", "prefork", "-c", "2", "-l", "info")
    with process(argv, env, "ready."), app.app_context():
        pids = {factory.backend_pid.delay().get(timeout=30, interval=0.02) for _ in range(6)}
    parent = int((Path(env["FT_INSTANCE"]) / "parent_backend_pid").read_text())
    assert parent not in pids


def test_flask_tasks_beat_sends_scheduled_tasks(factory_env: Any, tmp_path: Path) -> None:
    touched = tmp_path / "touched"
    env = factory_env(FT_BEAT_TOUCH=str(touched))
    worker_argv = flask("--app", APP, "tasks", "worker", "--pool", "solo", "-l", "info")
    beat_argv = flask("--app", APP, "tasks", "beat", "-l", "info")
    with process(worker_argv, env, "ready."), process(beat_argv, env, "beat: Starting"):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if touched.exists() and len(touched.read_text().splitlines()) >= 2:
                break
            time.sleep(0.1)
    assert len(touched.read_text().splitlines()) >= 2


def test_in_process_worker_on_every_broker(broker: str, make_app: Any) -> None:
    app = make_app(broker)
    factory.tasks.init_app(app)
    with start_worker(app), app.app_context():
        assert factory.add.delay(2, 40).get(timeout=20, interval=0.01) == 42
