"""A small app for the browser client's tests: tasks that report progress, fail, or wait.

``page`` renders a page that loads the client the documented way and shows one
``<task-progress>`` per task id given in the query string.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask, jsonify, render_template_string, request

from flask_tasks import Tasks, progress

tasks = Tasks()


@tasks.task
def count(n: int, delay: float) -> dict[str, Any]:
    """Count to ``n``, reporting progress with a total, and return a small dict."""
    for i in range(1, n + 1):
        time.sleep(delay)
        progress(i, n, message=f"step {i} of {n}")
    return {"counted": n, "ok": True}


@tasks.task
def wander(n: int, delay: float) -> None:
    """Report progress with no total (no percent, no ETA) and return nothing."""
    for i in range(1, n + 1):
        time.sleep(delay)
        progress(i, message=f"item {i}")


@tasks.task
def explode(message: str) -> None:
    time.sleep(0.2)
    raise ValueError(message)


PAGE = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  {% if csrf_token %}<meta name="csrf-token" content="{{ csrf_token }}">{% endif %}
  <title>flask-tasks client</title>
  <script type="module" src="{{ tasks_script_url() }}"></script>
  <script type="module">
    import * as client from "{{ tasks_script_url() }}";
    window.flaskTasks = client;
  </script>
  <style>
    body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 36rem; }
    task-progress { margin-bottom: 1.5rem; }
  </style>
</head>
<body>
  {% for id in ids %}
  <task-progress id="task-{{ loop.index }}" src="{{ url_for('tasks.status', task_id=id) }}"
    {%- if cancelable %} cancelable{% endif %}></task-progress>
  {% endfor %}
</body>
</html>
"""


def create_app(make_app: Callable[..., Flask], broker: str = "embedded", **config: Any) -> Flask:
    """The test app; ``CSRF_TOKEN`` in ``config`` makes cancelling require that token."""
    app = make_app(broker, **config)
    tasks.init_app(app)

    @app.get("/page")
    def page() -> str:
        return render_template_string(
            PAGE,
            ids=request.args.getlist("id"),
            cancelable="cancelable" in request.args,
            csrf_token=app.config.get("CSRF_TOKEN"),
        )

    @app.before_request
    def check_csrf() -> Any:
        token = app.config.get("CSRF_TOKEN")
        if token and request.method == "POST" and request.headers.get("X-CSRFToken") != token:
            return jsonify({"error": {"code": "csrf", "message": "CSRF token missing."}}), 400
        return None

    return app


class CutEventStreams:
    """WSGI middleware: the first event stream ends after its first record, mid-task, and
    every later one is refused with a 503, as a flaky proxy would do."""

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app
        self.streams = 0
        self.records_sent = 0

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not environ.get("PATH_INFO", "").endswith("/events"):
            return self.wsgi_app(environ, start_response)  # type: ignore[no-any-return]
        self.streams += 1
        if self.streams > 1:
            start_response("503 SERVICE UNAVAILABLE", [("Content-Type", "application/json")])
            return [b'{"error": {"code": "store_unavailable", "message": "cut by the test"}}']
        return self._first_record_only(self.wsgi_app(environ, start_response))

    def _first_record_only(self, body: Iterable[bytes]) -> Iterator[bytes]:
        seen = b""
        try:
            for chunk in body:
                yield chunk
                seen += chunk
                if b"event: record" in seen and b"\n\n" in seen.split(b"event: record", 1)[1]:
                    self.records_sent += 1
                    return
        finally:
            close = getattr(body, "close", None)
            if close is not None:
                close()
