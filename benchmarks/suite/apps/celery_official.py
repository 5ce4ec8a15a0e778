"""Raw Celery wired with Flask's official pattern ("Background Tasks with Celery").

``celery_init_app`` as in Flask's docs, with ``CELERY = {...}`` in the Flask config, Redis
as broker and result backend, ``task_ignore_result = True`` and
``@shared_task(ignore_result=False)`` on the tasks whose results are read, as the docs do.
The status route is the docs' ``GET /result/<id>`` (``AsyncResult``: ready, successful,
value). Worker, as the docs' ``make_celery.py``:
``celery -A benchmarks.suite.apps.celery_official:celery_app worker -c 2``.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery, Task, shared_task
from celery.result import AsyncResult
from flask import Flask

from ._common import REDIS_URL, progress_loop

QUEUE = "bench-official"


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


@shared_task(ignore_result=False)
def noop() -> None:
    return None


@shared_task(bind=True, ignore_result=False)
def progress_task(self: Any, n: int, token: str, report: bool) -> float:
    def update(i: int, total: int) -> None:
        self.update_state(state="PROGRESS", meta={"current": i, "total": total})

    return progress_loop(n, token, update if report else None)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        CELERY={
            "broker_url": REDIS_URL,
            "result_backend": REDIS_URL,
            "task_ignore_result": True,
            "task_default_queue": QUEUE,
        },
    )
    celery_init_app(app)

    @app.post("/submit")
    def submit() -> tuple[dict[str, str], int]:
        return {"id": noop.delay().id}, 202

    @app.get("/result/<id>")
    def task_result(id: str) -> dict[str, object]:
        result = AsyncResult(id)
        ready = result.ready()
        return {
            "ready": ready,
            "successful": result.successful() if ready else None,
            "value": result.result if ready else None,
        }

    return app


@functools.cache
def _worker_app() -> Celery:
    flask_app = create_app()
    celery_app: Celery = flask_app.extensions["celery"]
    return celery_app


def __getattr__(name: str) -> Any:
    # ``celery -A module:celery_app``: built on first access only, so that importing this
    # module (gunicorn, the driver) creates no app of its own.
    if name == "celery_app":
        return _worker_app()
    raise AttributeError(name)


# -- the driver's side --------------------------------------------------------------------


def enqueue(app: Flask, n: int) -> list[str]:
    with app.app_context():
        return [noop.delay().id for _ in range(n)]


def finished(app: Flask, ids: list[str]) -> int:
    """Results present in the backend (Celery writes one only when the task ends)."""
    client = app.extensions["celery"].backend.client
    keys = [f"celery-task-meta-{i}" for i in ids]
    return sum(int(client.exists(*keys[i : i + 1000])) for i in range(0, len(keys), 1000))


def purge(app: Flask) -> None:
    with app.app_context():
        app.extensions["celery"].control.purge()


def start_progress(app: Flask, n: int, token: str, report: bool) -> str:
    with app.app_context():
        return str(progress_task.delay(n, token, report).id)
