"""The OpenAPI 3.1 description of the HTTP API (served at ``<prefix>/openapi.json``)."""

from __future__ import annotations

from typing import Any

from .state import TaskState

_TIME = {"type": ["string", "null"], "format": "date-time"}
_NUMBER_OR_NULL = {"type": ["number", "null"]}

SCHEMAS: dict[str, Any] = {
    "Progress": {
        "type": "object",
        "description": "How far a task is. One schema everywhere (Python, JSON, JS, CLI).",
        "required": ["current", "total", "percent", "message", "eta_seconds"],
        "additionalProperties": False,
        "properties": {
            "current": {"type": "number"},
            "total": _NUMBER_OR_NULL,
            "percent": {"type": ["number", "null"], "minimum": 0, "maximum": 100},
            "message": {"type": ["string", "null"]},
            "eta_seconds": {"type": ["number", "null"], "minimum": 0},
        },
    },
    "TaskError": {
        "type": "object",
        "description": "Why a task failed. The traceback is only given when the app is in "
        "debug mode.",
        "required": ["type", "message"],
        "additionalProperties": False,
        "properties": {
            "type": {"type": "string"},
            "message": {"type": "string"},
            "traceback": {"type": ["string", "null"]},
        },
    },
    "Task": {
        "type": "object",
        "required": [
            "id",
            "name",
            "state",
            "progress",
            "result",
            "error",
            "owner",
            "queue",
            "attempt",
            "submitted_at",
            "started_at",
            "finished_at",
            "updated_at",
            "cancel_requested",
            "meta",
            "links",
        ],
        "additionalProperties": False,
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "state": {"type": "string", "enum": [s.value for s in TaskState]},
            "progress": {"oneOf": [{"$ref": "#/components/schemas/Progress"}, {"type": "null"}]},
            "result": {"description": "The task's return value, once it succeeded."},
            "error": {"oneOf": [{"$ref": "#/components/schemas/TaskError"}, {"type": "null"}]},
            "owner": {"type": ["string", "null"]},
            "queue": {"type": ["string", "null"]},
            "attempt": {"type": "integer", "minimum": 0},
            "submitted_at": {"type": "string", "format": "date-time"},
            "started_at": _TIME,
            "finished_at": _TIME,
            "updated_at": {"type": "string", "format": "date-time"},
            "cancel_requested": {"type": "boolean"},
            "meta": {"description": "The meta of a custom Celery state (update_state), if any."},
            "links": {
                "type": "object",
                "required": ["self"],
                "properties": {
                    "self": {"type": "string"},
                    "cancel": {"type": "string"},
                    "events": {"type": "string"},
                },
            },
        },
    },
    "TaskPage": {
        "type": "object",
        "required": ["tasks", "next_cursor", "links"],
        "additionalProperties": False,
        "properties": {
            "tasks": {"type": "array", "items": {"$ref": "#/components/schemas/Task"}},
            "next_cursor": {"type": ["string", "null"]},
            "links": {
                "type": "object",
                "required": ["next"],
                "properties": {"next": {"type": ["string", "null"]}},
            },
        },
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
            "task": {"$ref": "#/components/schemas/Task"},
        },
    },
}


def _json(schema: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }


_TASK_ID = {
    "name": "task_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
# One event of the stream (OpenAPI 3.1 reads an event stream's schema as each event's).
_EVENT = {
    "type": "object",
    "required": ["id", "event", "data"],
    "properties": {
        "id": {"type": "string", "pattern": "^[0-9]+$"},
        "event": {"const": "record"},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/Task"},
        },
    },
}
_NOT_FOUND = _json("Error", "No such task, it expired, or it is not yours.")
_UNAVAILABLE = _json("Error", "The record store cannot be reached.")


def document(prefix: str) -> dict[str, Any]:
    """The OpenAPI document for an API mounted at ``prefix`` (e.g. ``/tasks``)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "flask-tasks",
            "version": "1",
            "description": "Status, listing and cancellation of background tasks.",
        },
        "paths": {
            f"{prefix}/": {
                "get": {
                    "operationId": "listTasks",
                    "summary": "The caller's tasks, newest first (tasks without an owner are "
                    "never listed).",
                    "parameters": [
                        {
                            "name": "state",
                            "in": "query",
                            "schema": {"type": "string", "enum": [s.value for s in TaskState]},
                        },
                        {"name": "name", "in": "query", "schema": {"type": "string"}},
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 1, "maximum": 100},
                        },
                        {
                            "name": "cursor",
                            "in": "query",
                            "description": "The next_cursor of the previous page; any "
                            "other value is a 400.",
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": {
                        "200": _json("TaskPage", "One page of tasks."),
                        "400": _json("Error", "A parameter is not valid."),
                        "503": _UNAVAILABLE,
                    },
                }
            },
            f"{prefix}/{{task_id}}": {
                "get": {
                    "operationId": "getTask",
                    "summary": "A task's record: state, progress, result or error.",
                    "parameters": [_TASK_ID],
                    "responses": {
                        "200": _json("Task", "The task (a failed task is a 200 too)."),
                        "404": _NOT_FOUND,
                        "503": _UNAVAILABLE,
                    },
                }
            },
            f"{prefix}/{{task_id}}/events": {
                "get": {
                    "operationId": "watchTask",
                    "summary": "The task's record, then each change of it, as Server-Sent "
                    "Events; the stream ends after a final state.",
                    "description": "Each event is `id: <updated_at in microseconds>`, "
                    "`event: record`, `data: <the JSON of GET /tasks/{task_id}>`. A reconnect "
                    "sending `Last-Event-ID` does not get the record it already has.",
                    "parameters": [
                        _TASK_ID,
                        {"name": "Last-Event-ID", "in": "header", "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": {
                            "description": "A stream of record events.",
                            "content": {"text/event-stream": {"schema": _EVENT}},
                        },
                        "404": _NOT_FOUND,
                        "429": {
                            **_json(
                                "Error",
                                "This client holds TASKS_SSE_MAX_PER_CLIENT streams already.",
                            ),
                            "headers": {
                                "Retry-After": {
                                    "description": "Seconds to wait before trying again.",
                                    "schema": {"type": "integer"},
                                }
                            },
                        },
                        "503": _UNAVAILABLE,
                    },
                }
            },
            f"{prefix}/{{task_id}}/cancel": {
                "post": {
                    "operationId": "cancelTask",
                    "summary": "Cancel a task: a queued one never starts, a running one stops "
                    "at its next progress report.",
                    "description": "Send it with 'Content-Type: application/json' (the "
                    "body is not read) or an 'X-Requested-With' header: a cross-site form "
                    "can do neither. With Flask-WTF's CSRFProtect, send its token as "
                    "'X-CSRFToken' too.",
                    "parameters": [_TASK_ID],
                    "requestBody": {
                        "required": True,
                        "description": "Any JSON, e.g. {} (ignored). Or no body and an "
                        "'X-Requested-With' header.",
                        "content": {"application/json": {"schema": {}}},
                    },
                    "responses": {
                        "202": _json("Task", "Cancellation asked; the task as it is now."),
                        "400": _json("Error", "Flask-WTF's CSRF token is missing or wrong."),
                        "404": _NOT_FOUND,
                        "409": _json("Error", "The task already ended."),
                        "415": _json("Error", "Not sent as JSON nor with X-Requested-With."),
                        "503": _UNAVAILABLE,
                    },
                }
            },
        },
        "components": {"schemas": SCHEMAS},
    }
