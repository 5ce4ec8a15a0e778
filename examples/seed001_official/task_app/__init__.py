"""Seed 001, Flask's official Celery pattern, on flask-tasks.

The official pattern's ``celery_init_app(app)`` becomes ``tasks.init_app(app)``; the rest
of its code (``@shared_task``, ``AsyncResult``, ``app.extensions["celery"]``,
``celery -A make_celery worker``) is kept as the official docs write it.

    flask --app task_app run
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, render_template

from .extensions import tasks


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    # INSTANCE_PATH=/some/dir keeps the embedded queue and the records out of ./instance.
    instance = os.environ.get("INSTANCE_PATH")
    app = Flask(__name__, instance_path=os.path.abspath(instance) if instance else None)
    app.config.from_mapping(
        # No broker_url: the embedded SQLite queue in the instance folder. For Redis, add
        # broker_url="redis://localhost" and result_backend="redis://localhost" here, or
        # set FLASK_CELERY__broker_url and FLASK_CELERY__result_backend.
        CELERY={"task_ignore_result": True},
        # Periodic tasks, sent by 'flask tasks beat' (and by 'flask run' on the embedded
        # queue). FLASK_TASKS_SCHEDULE__tally__schedule=5 runs it every 5 s instead.
        TASKS_SCHEDULE={"tally": {"task": "task_app.tasks.tally", "schedule": 60}},
    )
    app.config.from_prefixed_env()
    app.config.update(test_config or {})
    tasks.init_app(app)  # was: celery_init_app(app)

    @app.route("/")
    def index() -> str:
        return render_template("index.html")

    from . import views

    app.register_blueprint(views.bp)
    return app
