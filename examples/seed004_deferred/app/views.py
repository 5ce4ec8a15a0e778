"""Calling the task through ``current_app``, as the seed did, and through its typed handle."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, render_template, request, url_for

from app.celerytasks import my_add

bp = Blueprint("main", __name__)


@bp.get("/")
def index() -> str:
    return render_template("index.html")


def _operands() -> tuple[int, int]:
    return request.form.get("x", 1, type=int), request.form.get("y", 2, type=int)


@bp.post("/add/by-name")
def add_by_name() -> Any:
    """The seed's way: find the task on the current app, by name."""
    x, y = _operands()
    task = current_app.extensions["celery"].tasks["app.celerytasks.my_add"]
    handle = task.delay(x, y)
    return _sent(handle.id, "current_app.extensions['celery'].tasks['app.celerytasks.my_add']")


@bp.post("/add")
def add() -> Any:
    """The typed handle: the function's own signature, bound to the current app."""
    x, y = _operands()
    handle = my_add.delay(x, y)
    return _sent(handle.id, "my_add.delay(x, y)")


def _sent(task_id: str, via: str) -> Any:
    status = url_for("tasks.status", task_id=task_id)
    return {"id": task_id, "via": via, "status": status}, 202, {"Location": status}
