"""Flask-Executor: ``concurrent.futures`` threads inside the web process.

A reference point, not a durable queue: tasks live in the memory of the web process that
took the request (lost when it exits, invisible to the others), and there is no worker to
start. Set up as its docs show: ``Executor(app)``, ``EXECUTOR_MAX_WORKERS = 2`` (the
2 workers of the other rows), tasks sent with ``submit_stored(key, fn)`` so that their
futures can be looked up; the status route is the docs' (``executor.futures.done(key)``
and ``.result(key)``), without the docs' ``pop()``, so that a finished task can be polled
more than once. Its server runs one process (futures are per process).
"""

from __future__ import annotations

import uuid
from typing import Any

from flask import Flask
from flask_executor import Executor

executor = Executor()


def noop() -> None:
    return None


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["EXECUTOR_MAX_WORKERS"] = 2
    # It keeps the last 50 stored futures by default: enough for the 10,000 of the status
    # workload (its documented setting, as the other rows keep their results 1 h).
    app.config["EXECUTOR_FUTURES_MAX_LENGTH"] = 20_000
    executor.init_app(app)

    @app.post("/submit")
    def submit() -> tuple[dict[str, str], int]:
        key = str(uuid.uuid4())
        executor.submit_stored(key, noop)
        return {"id": key}, 202

    @app.get("/futures/<key>")
    def future_status(key: str) -> Any:
        done = executor.futures.done(key)
        if done is None:
            return {"error": "not found"}, 404
        return {"id": key, "done": done, "result": executor.futures.result(key) if done else None}

    return app


# -- the driver's side: everything happens in the one process ----------------------------


def drain_in_process(app: Flask, n: int) -> dict[str, float]:
    """Submit ``n`` no-op tasks to the 2 threads at once and time them to the last one."""
    import time
    from concurrent.futures import wait

    with app.test_request_context():
        started = time.perf_counter()
        futures = [executor.submit(noop) for _ in range(n)]
        submitted = time.perf_counter()
        wait(futures)
        ended = time.perf_counter()
    return {"seconds": ended - started, "submit_seconds": submitted - started}
