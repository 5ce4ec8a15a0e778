"""The HTTP API: a task's status, the caller's tasks, cancellation, the OpenAPI document.

A thin layer: records come from the app's store through the extension, and every answer
is JSON with ``Cache-Control: no-store``. A task with an owner is visible to that owner
(and to whoever the ``authorize`` hook allows); anyone else gets the same 404 as for an
id that does not exist, so ids do not leak. A failed task is a 200 with
``state: "failed"``: the API reports on tasks, it does not re-raise their errors.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from flask import Blueprint, Response, current_app, g, jsonify, request, url_for
from werkzeug.exceptions import BadRequest, NotFound
from werkzeug.routing import PathConverter

from .openapi import document
from .state import TaskRecord, TaskState
from .store.base import CancelOutcome, StoreError

if TYPE_CHECKING:
    from flask.blueprints import BlueprintSetupState

    from .extension import TasksState

MAX_ID_LENGTH = 255
ABSENT_ID_PREFIX = "flask-tasks-absent:"  # no task id starts with it (ids are UUIDs)
DEFAULT_LIMIT = 20
MAX_LIMIT = 100
STATES = {state.value: state for state in TaskState}


def _state() -> TasksState:
    state: TasksState = current_app.extensions["tasks"]
    return state


def _error(status: int, code: str, message: str, **extra: Any) -> tuple[Response, int]:
    return jsonify({"error": {"code": code, "message": message}, **extra}), status


def _not_found() -> tuple[Response, int]:
    return _error(404, "not_found", "No task with this id (or it expired).")


def _unavailable(exc: StoreError) -> tuple[Response, int]:
    current_app.logger.error("flask-tasks: the record store failed: %s", exc)
    return _error(503, "store_unavailable", "Task records are unavailable; try again shortly.")


def record_json(record: TaskRecord) -> dict[str, Any]:
    """A record as the API serves it: the record's fields and links."""
    data = record.to_dict(traceback=current_app.debug)
    base = request.script_root + _state().settings.url_prefix.rstrip("/")
    links = {"self": f"{base}/{quote(record.id, safe='')}"}
    if not record.finished:
        links["cancel"] = f"{links['self']}/cancel"
        links["events"] = f"{links['self']}/events"
    data["links"] = links
    return data


def _visible(task_id: str, action: str, *, fresh: bool = False) -> TaskRecord | None:
    """The record, if it exists and the caller may see it (raises StoreError)."""
    if not task_id or len(task_id) > MAX_ID_LENGTH or "\x00" in task_id:
        return None  # no store can hold such an id (PostgreSQL refuses NUL in text)
    state = _state()
    if fresh:
        record = state.store.get(task_id)
    else:
        cached = state.cache.get(task_id)
        if cached is not None and not state.extension.allowed(action, cached):
            # Answer as late as for an id that is not cached: read an id that does not
            # exist, so how fast a 404 comes back does not tell that the task exists.
            state.store.get(ABSENT_ID_PREFIX + task_id)
            return None
        record = cached if cached is not None else state.read(task_id)
    if record is None or not state.extension.allowed(action, record):
        return None
    return record


def status(task_id: str) -> Any:
    """``GET /tasks/<id>``: the whole record."""
    try:
        record = _visible(task_id, "read")
    except StoreError as exc:
        return _unavailable(exc)
    if record is None:
        return _not_found()
    # Many clients poll the same few tasks: a record read from the cache renders once.
    cache = _state().cache
    variant = (current_app.debug, request.script_root)
    body = cache.body(record.id, variant)
    if body is None:
        body = current_app.json.dumps(record_json(record)).encode() + b"\n"
        cache.keep_body(record, variant, body)
    return current_app.response_class(body, mimetype="application/json")


def index() -> Any:
    """``GET /tasks/``: the caller's tasks, newest first, one page at a time."""
    args = request.args
    state_name = args.get("state")
    if state_name is not None and state_name not in STATES:
        return _error(400, "bad_request", f"state must be one of: {', '.join(sorted(STATES))}.")
    try:
        limit = int(args.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = 0
    if not 1 <= limit <= MAX_LIMIT:
        return _error(400, "bad_request", f"limit must be a whole number from 1 to {MAX_LIMIT}.")
    name = args.get("name") or None
    cursor = args.get("cursor") or None
    tasks_state = _state()
    owner = tasks_state.extension.current_owner()
    if owner is None:  # tasks without an owner are never listed
        return jsonify({"tasks": [], "next_cursor": None, "links": {"next": None}})
    try:
        page = tasks_state.store.list(
            owner=owner,
            state=STATES[state_name] if state_name else None,
            name=name,
            limit=limit,
            cursor=cursor,
        )
    except ValueError:
        return _error(400, "bad_request", "cursor is not valid; start again without it.")
    except StoreError as exc:
        return _unavailable(exc)
    next_link = None
    if page.next_cursor is not None:
        query: dict[str, Any] = {k: v for k, v in args.items() if k != "cursor"}
        next_link = url_for("tasks.index", **query, cursor=page.next_cursor)
    return jsonify(
        {
            "tasks": [record_json(r) for r in page.records],
            "next_cursor": page.next_cursor,
            "links": {"next": next_link},
        }
    )


def _sent_by_script() -> bool:
    """A cross-site HTML form can send neither a JSON body nor a custom header."""
    return request.is_json or "X-Requested-With" in request.headers


def check_csrf() -> None:
    """Apply Flask-WTF's ``CSRFProtect`` to this request when the app uses it.

    Its own ``before_request`` hook checks every POST unless ``WTF_CSRF_CHECK_DEFAULT``
    is off; then it is done here, so a state-changing endpoint stays protected either way.
    Exempting the view or blueprint (``csrf.exempt``) is honoured. Raises Flask-WTF's
    ``CSRFError`` (a 400).
    """
    csrf = current_app.extensions.get("csrf")
    config = current_app.config
    if csrf is None or not hasattr(csrf, "protect") or g.get("csrf_valid"):
        return
    if not config.get("WTF_CSRF_ENABLED", True) or config.get("WTF_CSRF_CHECK_DEFAULT", True):
        return  # off, or checked by CSRFProtect's own hook (which honours exemptions)
    if "apply_exemptions" in inspect.signature(csrf.protect).parameters:
        csrf.protect(apply_exemptions=True)
    elif not csrf._is_exempt():  # Flask-WTF before 1.3
        csrf.protect()


def _bad_request(exc: BadRequest) -> tuple[Response, int]:
    """A 400 raised in the API (Flask-WTF's CSRFError among them), as JSON."""
    code = "csrf_failed" if type(exc).__name__ == "CSRFError" else "bad_request"
    return _error(400, code, exc.description or "The request is not valid.")


def cancel(task_id: str) -> Any:
    """``POST /tasks/<id>/cancel``: 202 when asked, 409 when the task already ended."""
    if not _sent_by_script():
        return _error(
            415,
            "unsupported_media_type",
            "Send this request with 'Content-Type: application/json' or an "
            "'X-Requested-With' header.",
        )
    check_csrf()
    state = _state()
    try:
        record = _visible(task_id, "cancel", fresh=True)
        if record is None:
            return _not_found()
        outcome = state.extension.cancel(task_id)
        state.cache.forget(task_id)
        updated = state.store.get(task_id) or record
    except StoreError as exc:
        return _unavailable(exc)
    if outcome is CancelOutcome.NOT_FOUND:
        return _not_found()
    if outcome is CancelOutcome.FINISHED:
        return _error(409, "finished", "The task already ended.", task=record_json(updated))
    return jsonify(record_json(updated)), 202


def openapi() -> Any:
    """``GET /tasks/openapi.json``: the OpenAPI 3.1 description of this API."""
    prefix = url_for("tasks.index").rstrip("/")
    return jsonify(document(prefix))


def events(task_id: str) -> Any:
    """``GET /tasks/<id>/events``: the record's changes as Server-Sent Events."""
    from .sse import stream

    return stream(task_id)


STATIC = os.path.join(os.path.dirname(__file__), "static")


def script_url() -> str:
    """The URL of the JS client, with a version that changes with its content.

    Available in templates as ``tasks_script_url()``.
    """
    return url_for("tasks.static", filename="flask-tasks.js", v=_script_version())


@functools.cache
def _script_version() -> str:
    with open(os.path.join(STATIC, "flask-tasks.js"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:12]


def _static_headers(response: Response) -> Response:
    if request.endpoint == "tasks.static":
        # The URL changes with the content (?v=...), so it can be cached for good.
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
    else:
        response.headers["Cache-Control"] = "no-store"
    return response


class TaskIdConverter(PathConverter):
    """A task id in a URL: like ``path``, but a newline (``%0A``) is part of the id too,
    so every id that is not a task gets the API's JSON 404, not the app's HTML one."""

    regex = "[^/][\\s\\S]*?"


def _register_converter(setup: BlueprintSetupState) -> None:
    setup.app.url_map.converters.setdefault(ID_CONVERTER, TaskIdConverter)


ID_CONVERTER = "flask_tasks_id"


def make_blueprint() -> Blueprint:
    """The API blueprint, named ``tasks`` (``url_for("tasks.status", task_id=...)``)."""
    bp = Blueprint("tasks", __name__, static_folder=STATIC, static_url_path="/static")
    bp.record_once(_register_converter)  # before the rules that use it
    task = f"<{ID_CONVERTER}:task_id>"
    bp.add_url_rule("/", "index", index, methods=["GET"])
    bp.add_url_rule("/openapi.json", "openapi", openapi, methods=["GET"])
    bp.add_url_rule(f"/{task}", "status", status, methods=["GET"])
    bp.add_url_rule(f"/{task}/cancel", "cancel", cancel, methods=["POST"])
    bp.add_url_rule(f"/{task}/events", "events", events, methods=["GET"])
    bp.register_error_handler(BadRequest, _bad_request)
    # e.g. GET <prefix>/static/<a file that is not there>: the same 404 as a task's.
    bp.register_error_handler(NotFound, lambda exc: _not_found())
    bp.after_request(_static_headers)
    bp.add_app_template_global(script_url, "tasks_script_url")
    return bp
