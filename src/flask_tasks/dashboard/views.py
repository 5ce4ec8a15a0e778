"""The dashboard's views: HTML pages over :mod:`.data`, and the Retry endpoint.

Every request, the static files included, first asks the ``authorize`` hook for the
``"dashboard"`` action (in debug mode, an app without a hook is let in); anyone else gets
a 403. Reading and cancelling a task from a page go through the HTTP API and its rules.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from flask import Blueprint, abort, current_app, jsonify, render_template, request, url_for

from flask_tasks.exceptions import PublishError
from flask_tasks.state import TaskRecord, TaskState
from flask_tasks.store.base import StoreError

from . import data
from .actions import resend

if TYPE_CHECKING:
    from flask import Response

    from flask_tasks.extension import TasksState

HERE = os.path.dirname(__file__)
MAX_ID_LENGTH = 255
TEMPLATES = "flask_tasks/dashboard"
# The pages show task data anyone could have put there (names, results, errors): scripts
# come from this app only, and the pages cannot be framed (no clickjacking of buttons).
# Inline styles: the <task-progress> element styles its shadow root with a <style>.
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    ),
}


def _state() -> TasksState:
    state: TasksState = current_app.extensions["tasks"]
    return state


def _allowed(action: str, record: TaskRecord | None = None) -> bool:
    """The ``authorize`` hook's answer; without a hook, yes in debug mode only."""
    extension = _state().extension
    if extension._authorizer is None:
        return current_app.debug
    return extension.allowed(action, record)


def _api_allows(action: str, record: TaskRecord) -> bool:
    """Whether the HTTP API lets this user ``action`` the task (the live parts use it)."""
    return _state().extension.allowed(action, record)


def _check_access() -> None:
    if not _allowed("dashboard"):
        abort(403)


def _headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        if name == "Cache-Control" and request.endpoint == "tasks_dashboard.static":
            continue
        response.headers.setdefault(name, value)
    return response


def _page(template: str, status: int = 200, **context: Any) -> tuple[str, int]:
    return render_template(f"{TEMPLATES}/{template}", **context), status


def _unavailable(exc: Exception) -> tuple[str, int]:
    current_app.logger.error("flask-tasks: the dashboard could not read the store: %s", exc)
    return _page(
        "error.html", 503, title="Task records are unavailable", message="Try again shortly."
    )


def index() -> Any:
    """The task list: newest first, filtered by state and name, one page at a time."""
    state = _state()
    names = data.task_names(state.celery.tasks.keys())
    try:
        filters = data.Filters.parse(request.args)
    except data.BadQuery as exc:
        return _page("error.html", 400, title="Bad filter", message=str(exc))
    try:
        listing = data.listing(state.store, filters)
    except data.BadQuery as exc:
        return _page("error.html", 400, title="Bad page link", message=str(exc))
    except StoreError as exc:
        return _unavailable(exc)
    return _page("index.html", listing=listing, filters=filters, names=names)


def _record(task_id: str) -> TaskRecord | None:
    if not task_id or len(task_id) > MAX_ID_LENGTH or "\x00" in task_id:
        return None
    return _state().store.get(task_id)


def task(task_id: str) -> Any:
    """One task: every field of its record, its arguments, and the Retry button."""
    state = _state()
    try:
        record = _record(task_id)
        if record is None:
            return _page(
                "error.html",
                404,
                title="No such task",
                message="No task has this id (or its record expired).",
            )
        plan = data.retry_plan(state.store, record) if record.finished else None
    except StoreError as exc:
        return _unavailable(exc)
    retry_of = request.args.get("retry_of") or None
    may_retry = plan is not None and _allowed("retry", record)
    return _page("task.html", record=record, plan=plan, may_retry=may_retry, retry_of=retry_of)


def _error(status: int, code: str, message: str) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}}), status


def retry(task_id: str) -> Any:
    """``POST .../task/<id>/retry``: send a finished task again; 201 with the new task."""
    # A cross-site HTML form can send neither a JSON body nor a custom header.
    if not (request.is_json or "X-Requested-With" in request.headers):
        return _error(
            415,
            "unsupported_media_type",
            "Send this request with 'Content-Type: application/json' or an "
            "'X-Requested-With' header.",
        )
    state = _state()
    try:
        record = _record(task_id)
        if record is None:
            return _error(404, "not_found", "No task with this id (or it expired).")
        if not _allowed("retry", record):
            return _error(403, "forbidden", "You may not retry this task.")
        plan = data.retry_plan(state.store, record)
        if not plan.available:
            return _error(409, "not_retryable", plan.reason or "")
        new_id = resend(state.celery, plan, record.owner)
    except (TypeError, ValueError) as exc:
        return _error(422, "bad_arguments", f"The task refused its arguments: {exc}")
    except StoreError as exc:
        current_app.logger.error("flask-tasks: the dashboard could not read the store: %s", exc)
        return _error(503, "store_unavailable", "Task records are unavailable; try again.")
    except PublishError as exc:
        return _error(503, "broker_unavailable", str(exc))
    url = url_for(".task", task_id=new_id, retry_of=record.id)
    response = jsonify({"id": new_id, "url": url})
    response.headers["Location"] = url
    return response, 201


def _template_context() -> dict[str, Any]:
    return {
        "api_allows": _api_allows,
        "states": list(TaskState),
        "state_labels": data.STATE_LABELS,
        "when": data.when,
        "iso": data.iso,
        "duration": data.duration,
        "pretty_json": data.pretty_json,
        "outcome": data.outcome,
        "progress_text": data.progress_text,
        "number": data.number,
        "eta": data.eta,
        "limits": data.LIMITS,
        "default_limit": data.DEFAULT_LIMIT,
    }


def make_blueprint() -> Blueprint:
    """The dashboard blueprint, ``tasks_dashboard`` (``url_for("tasks_dashboard.index")``)."""
    bp = Blueprint(
        "tasks_dashboard",
        __name__,
        template_folder=os.path.join(HERE, "templates"),
        static_folder=os.path.join(HERE, "static"),
        static_url_path="/static",
    )
    bp.before_request(_check_access)
    bp.after_request(_headers)
    bp.context_processor(_template_context)
    bp.add_url_rule("/", "index", index, methods=["GET"])
    bp.add_url_rule("/task/<path:task_id>", "task", task, methods=["GET"])
    bp.add_url_rule("/task/<path:task_id>/retry", "retry", retry, methods=["POST"])
    return bp
