"""flask-tasks, on Redis (broker and record store) and on its embedded SQLite default.

Set up as its docs say (docs/deployment.md): ``TASKS_BROKER_URL`` and
``TASKS_RESULT_BACKEND`` on Redis, the record store derived from them; or nothing at all
for the embedded broker, in an instance folder (``BENCH_INSTANCE``). Workers:
``flask --app benchmarks.suite.apps.flask_tasks_app:create_app tasks worker -c 2``.
The status route is flask-tasks' own ``GET /tasks/<id>``.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask

from flask_tasks import Tasks, TaskState, progress

from ._common import REDIS_URL, progress_loop

QUEUE = "bench-flask-tasks"
PREFIX = "bench_suite"

tasks = Tasks()


@tasks.task
def noop() -> None:
    return None


@tasks.task
def progress_task(n: int, token: str, report: bool) -> float:
    return progress_loop(n, token, progress if report else None)


def _app(config: dict[str, Any], instance_path: str | None = None) -> Flask:
    app = Flask(__name__, instance_path=instance_path)
    interval = os.environ.get("BENCH_PROGRESS_INTERVAL")
    if interval is not None:
        config["TASKS_PROGRESS_INTERVAL"] = float(interval)
    app.config.update(config)
    tasks.init_app(app)

    @app.post("/submit")
    def submit() -> tuple[dict[str, str], int]:
        return {"id": noop.delay().id}, 202

    return app


def _redis_config() -> dict[str, Any]:
    return {
        "TASKS_BROKER_URL": REDIS_URL,
        "TASKS_RESULT_BACKEND": REDIS_URL,
        "TASKS_STORE_PREFIX": PREFIX,
        "TASKS_CELERY": {"task_default_queue": QUEUE},
    }


def create_app() -> Flask:
    """flask-tasks on Redis: broker, result backend and records."""
    return _app(_redis_config())


def create_fresh_app() -> Flask:
    """As :func:`create_app`, but the status view keeps no queued or running record.

    ``TASKS_PROGRESS_INTERVAL = 0`` in the web app only (its workers use
    :func:`create_app`): the view's cache of unfinished records lasts no longer than the
    progress interval. Used by the end-to-end workload, to show that cache's share.
    """
    return _app({**_redis_config(), "TASKS_PROGRESS_INTERVAL": 0})


def create_embedded_app() -> Flask:
    """flask-tasks on its default: no broker configured, SQLite in the instance folder."""
    return _app({"TASKS_DEV_WORKER": False}, instance_path=os.environ["BENCH_INSTANCE"])


# -- the driver's side --------------------------------------------------------------------


def enqueue(app: Flask, n: int) -> list[str]:
    with app.app_context():
        return [noop.delay().id for _ in range(n)]


def finished_count(app: Flask) -> int:
    """Succeeded records in the store (the suite's prefix holds nothing else)."""
    return int(app.extensions["tasks"].store.counts()[TaskState.SUCCEEDED])


def purge(app: Flask) -> None:
    with app.app_context():
        app.extensions["celery"].control.purge()


def start_progress(app: Flask, n: int, token: str, report: bool) -> str:
    with app.app_context():
        return progress_task.delay(n, token, report).id
