"""The apps of bench_records.py: flask-tasks and Flask's official Celery pattern, on Redis.

Imported by the benchmark and by the gunicorn and Celery worker processes it starts
(``BENCH_SIDE`` picks which Celery app a worker gets).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, shared_task
from celery import Task as CeleryTask
from flask import Flask

from flask_tasks import Tasks

REDIS = "redis://127.0.0.1:6379/13"

tasks = Tasks()


@tasks.task
def noop() -> None:
    return None


@shared_task(ignore_result=False)
def official_noop() -> None:
    return None


def create_app() -> Flask:
    """flask-tasks on Redis (broker and records)."""
    app = Flask("bench_records")
    app.config.update(
        TASKS_BROKER_URL=REDIS,
        TASKS_STORE_PREFIX=os.environ.get("BENCH_PREFIX", "bench"),
        TASKS_CELERY={"task_default_queue": os.environ.get("BENCH_QUEUE", "bench-ours")},
    )
    tasks.init_app(app)

    @app.get("/trivial")
    def trivial() -> dict[str, Any]:
        return {"id": "x", "state": "succeeded"}

    return app


def create_official() -> Celery:
    """Flask's official pattern (celery_init_app) with a Redis result backend."""
    app = Flask("bench_official")
    app.config["CELERY"] = {
        "broker_url": REDIS,
        "result_backend": REDIS,
        "task_ignore_result": True,
        "task_default_queue": os.environ.get("BENCH_QUEUE", "bench-official"),
        "broker_connection_retry_on_startup": True,
    }

    class FlaskTask(CeleryTask):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


if os.environ.get("BENCH_SIDE") == "official":
    celery_app = create_official()
elif os.environ.get("BENCH_SIDE") == "ours":
    flask_app = create_app()
    celery_app = flask_app.extensions["celery"]
