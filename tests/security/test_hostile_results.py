"""Tasks that return what JSON cannot hold, or raise what cannot be serialized.

A real worker runs them: each ends ``failed`` with an error a person can read, the API
still answers valid JSON about it, and the worker goes on to run the next task.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from conftest import AppFactory
from flask_tasks import Tasks
from flask_tasks.testing import TasksWorker

pytestmark = pytest.mark.security

tasks = Tasks()


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this exception")


class NeedsTwo(Exception):
    """Cannot be rebuilt from its args: Celery wraps it as UnpickleableExceptionWrapper."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(a)
        self.lock = threading.Lock()


class OddArgs(Exception):
    pass


@tasks.task
def returns_set() -> Any:
    return {1, 2}


@tasks.task
def returns_object() -> Any:
    return object()


@tasks.task
def returns_nan() -> Any:
    return float("nan")


@tasks.task
def returns_nested_infinity() -> Any:
    return {"ratio": [1.0, float("inf")]}


@tasks.task
def raises_broken_str() -> None:
    raise BrokenStr()


@tasks.task
def raises_unpicklable() -> None:
    raise NeedsTwo(1, 2)


@tasks.task
def raises_with_odd_args() -> None:
    raise OddArgs({1, 2}, object(), b"\xff")


@tasks.task
def fine() -> str:
    return "still here"


@pytest.fixture(params=["embedded", "redis"])
def app(make_app: AppFactory, request: pytest.FixtureRequest) -> Flask:
    app = make_app(request.param)
    tasks.init_app(app)
    return app


@pytest.fixture
def worker(app: Flask) -> Iterator[TasksWorker]:
    with TasksWorker(app) as worker:
        yield worker


def strict_json(body: bytes) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(body, parse_constant=refuse)


CASES = [
    (returns_set, "EncodeError", "set is not JSON serializable"),
    (returns_object, "EncodeError", "object is not JSON serializable"),
    (returns_nan, "ValueError", "returned nan at result, which is not valid JSON"),
    (returns_nested_infinity, "ValueError", 'inf at result["ratio"][1]'),
    (raises_broken_str, "BrokenStr", ""),
    (raises_unpicklable, "NeedsTwo", "NeedsTwo(1)"),
    (raises_with_odd_args, "OddArgs", "{1, 2}"),
]


def test_bad_results_and_exceptions_fail_readably_and_the_worker_survives(
    app: Flask, worker: TasksWorker
) -> None:
    with app.app_context():
        handles = [(task.delay(), kind, text) for task, kind, text in CASES]
    client = app.test_client()
    for handle, kind, text in handles:
        record = worker.wait(handle, timeout=30)
        assert record.state.value == "failed", record
        assert record.error is not None
        assert record.error.type == kind
        assert text in record.error.message
        body = strict_json(client.get(f"/tasks/{handle.id}").data)
        assert body["state"] == "failed"
        assert body["error"] == {"type": kind, "message": record.error.message}
    # The same worker, still consuming: the next task runs.
    with app.app_context():
        handle = fine.delay()
    worker.assert_succeeded(handle, result="still here", timeout=30)
