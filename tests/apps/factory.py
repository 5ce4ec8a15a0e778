"""An app factory the CLI and prefork tests start in subprocesses.

FT_BROKER picks the broker kind, FT_QUEUE its queue, FT_INSTANCE the instance folder,
FT_DATABASE_URL an optional Flask-SQLAlchemy database.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, current_app, g, has_app_context, request

from apps.brokers import config_from_env
from flask_tasks import Tasks

tasks = Tasks()


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
def where() -> dict[str, Any]:
    """Where and how the task ran."""
    g.runs = g.get("runs", 0) + 1
    return {
        "pid": os.getpid(),
        "app": current_app.name,
        "has_app_context": has_app_context(),
        "marker": current_app.config.get("MARKER"),
        "runs_in_this_context": g.runs,
    }


@tasks.task
def backend_pid() -> int:
    """The PostgreSQL backend serving this process's Flask-SQLAlchemy session."""
    from sqlalchemy import text

    db = current_app.extensions["sqlalchemy"]
    return int(db.session.execute(text("select pg_backend_pid()")).scalar())


@tasks.task
def touch(path: str) -> None:
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def create_app() -> Flask:
    app = Flask("factory_app", instance_path=os.environ.get("FT_INSTANCE"))
    app.config.update(config_from_env())
    app.config["MARKER"] = "from-factory"
    app.config.from_prefixed_env()
    database = os.environ.get("FT_DATABASE_URL")
    if database:
        from flask_sqlalchemy import SQLAlchemy
        from sqlalchemy import text

        db = SQLAlchemy()
        app.config["SQLALCHEMY_DATABASE_URI"] = database
        db.init_app(app)
        with app.app_context():
            # Use a pooled connection before workers fork, as a real app would.
            pid = db.session.execute(text("select pg_backend_pid()")).scalar()
            db.session.commit()
            os.makedirs(app.instance_path, exist_ok=True)
            with open(os.path.join(app.instance_path, "parent_backend_pid"), "w") as f:
                f.write(str(pid))
    schedule = os.environ.get("FT_BEAT_TOUCH")
    if schedule:
        app.config["TASKS_CELERY"] = {
            **app.config.get("TASKS_CELERY", {}),
            "beat_schedule": {
                "touch": {"task": touch.name, "schedule": 0.5, "args": (schedule,)},
            },
            "beat_schedule_filename": os.path.join(app.instance_path, "beat-schedule"),
        }
    tasks.init_app(app)

    @app.post("/add")
    def start_add() -> dict[str, Any]:
        a = request.form.get("a", type=int) or 0
        b = request.form.get("b", type=int) or 0
        return {"id": add.delay(a, b).id}

    @app.get("/where")
    def start_where() -> dict[str, Any]:
        return {"id": where.delay().id}

    @app.get("/result/<task_id>")
    def task_result(task_id: str) -> dict[str, Any]:
        from celery.result import AsyncResult

        result = AsyncResult(task_id)
        return {"ready": result.ready(), "value": result.result if result.ready() else None}

    return app
