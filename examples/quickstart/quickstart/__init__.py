"""flask-tasks quickstart: an app factory whose tasks run with no broker installed."""

from __future__ import annotations

from typing import Any

from flask import Flask, render_template, request, url_for

from .tasks import add_together, slow_count, tasks


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config.from_prefixed_env()  # FLASK_TASKS_BROKER_URL=redis://... to use Redis
    if test_config:
        app.config.update(test_config)
    tasks.init_app(app)

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.post("/add")
    def start_add() -> tuple[dict[str, Any], int, dict[str, str]]:
        a = request.form.get("a", 0, type=int)
        b = request.form.get("b", 0, type=int)
        handle = add_together.delay(a, b)
        location = url_for("task_result", task_id=handle.id)
        return {"result_id": handle.id}, 202, {"Location": location}

    @app.post("/count")
    def start_count() -> tuple[dict[str, Any], int]:
        seconds = request.form.get("seconds", 3, type=int)
        return {"result_id": slow_count.delay(min(max(seconds, 1), 30)).id}, 202

    @app.get("/result/<task_id>")
    def task_result(task_id: str) -> dict[str, Any]:
        result = tasks.celery.AsyncResult(task_id)
        ready = result.ready()
        return {
            "state": result.state,
            "ready": ready,
            "successful": result.successful() if ready else None,
            "value": result.result if ready and result.successful() else None,
        }

    return app
