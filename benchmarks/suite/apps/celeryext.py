"""Flask-CeleryExt (Invenio's integration layer), Redis broker and result backend.

As its docs show: ``FlaskCeleryExt().init_app(app)`` in the factory, Celery settings as
upper-case Flask config keys (``CELERY_BROKER_URL``, ``CELERY_RESULT_BACKEND``, mapped to
Celery's names), tasks declared with ``@shared_task`` (Invenio's way: the Celery app only
exists once the Flask app does), run in an app context by its ``AppContextTask``. It has
no status route: this one is Flask's docs' ``AsyncResult`` route, as for the official
pattern. Worker: ``celery -A benchmarks.suite.apps.celeryext:celery_app worker -c 2``.
"""

from __future__ import annotations

import functools
from typing import Any

from celery import Celery, shared_task
from celery.result import AsyncResult
from flask import Flask
from flask_celeryext import FlaskCeleryExt

from ._common import REDIS_URL, progress_loop

QUEUE = "bench-celeryext"

ext = FlaskCeleryExt()


@shared_task
def noop() -> None:
    return None


@shared_task(bind=True)
def progress_task(self: Any, n: int, token: str, report: bool) -> float:
    def update(i: int, total: int) -> None:
        self.update_state(state="PROGRESS", meta={"current": i, "total": total})

    return progress_loop(n, token, update if report else None)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        CELERY_BROKER_URL=REDIS_URL,
        CELERY_RESULT_BACKEND=REDIS_URL,
        CELERY_TASK_DEFAULT_QUEUE=QUEUE,
    )
    ext.init_app(app)

    @app.post("/submit")
    def submit() -> tuple[dict[str, str], int]:
        return {"id": noop.delay().id}, 202

    @app.get("/result/<id>")
    def task_result(id: str) -> dict[str, object]:
        result = AsyncResult(id, app=ext.celery)
        ready = result.ready()
        return {
            "ready": ready,
            "successful": result.successful() if ready else None,
            "value": result.result if ready else None,
        }

    return app


@functools.cache
def _worker_app() -> Celery:
    create_app()
    celery_app: Celery = ext.celery
    return celery_app


def __getattr__(name: str) -> Any:
    # ``celery -A module:celery_app``, built on first access (see celery_official.py).
    if name == "celery_app":
        return _worker_app()
    raise AttributeError(name)


# -- the driver's side --------------------------------------------------------------------


def enqueue(app: Flask, n: int) -> list[str]:
    with app.app_context():
        return [noop.delay().id for _ in range(n)]


def finished(app: Flask, ids: list[str]) -> int:
    client = ext.celery.backend.client
    keys = [f"celery-task-meta-{i}" for i in ids]
    return sum(int(client.exists(*keys[i : i + 1000])) for i in range(0, len(keys), 1000))


def purge(app: Flask) -> None:
    ext.celery.control.purge()


def start_progress(app: Flask, n: int, token: str, report: bool) -> str:
    with app.app_context():
        return str(progress_task.delay(n, token, report).id)
