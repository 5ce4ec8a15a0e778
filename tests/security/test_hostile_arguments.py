"""``delay()`` with arguments JSON cannot carry, or too many of them: refused at the call
with an error naming the argument, and nothing reaches the broker or the record store."""

from __future__ import annotations

import datetime
import time
from typing import Any

import pytest
from flask import Flask, request
from kombu import Producer

from conftest import AppFactory
from flask_tasks import Tasks

pytestmark = pytest.mark.security

tasks = Tasks()


@tasks.task
def echo(*args: Any, **kwargs: Any) -> None:
    return None


@tasks.owner_loader
def owner_from_header() -> str | None:
    return request.headers.get("X-User")


@pytest.fixture
def app(make_app: AppFactory, broker: str) -> Flask:
    app = make_app(broker)
    tasks.init_app(app)
    return app


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every message any producer publishes during the test, on any broker."""
    sent: list[Any] = []
    original = Producer.publish

    def publish(self: Producer, body: Any, *args: Any, **kwargs: Any) -> Any:
        sent.append(body)
        return original(self, body, *args, **kwargs)

    monkeypatch.setattr(Producer, "publish", publish)
    return sent


def nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


MB = 1024 * 1024

HOSTILE: list[tuple[str, tuple[Any, ...], dict[str, Any], type[Exception], str]] = [
    ("datetime", (), {"when": datetime.datetime(2026, 1, 1)}, TypeError, 'kwargs["when"]'),
    ("object", ({"user": object()},), {}, TypeError, 'args[0]["user"]'),
    ("bytes", (b"\x80\x81",), {}, TypeError, "args[0]: bytes"),
    ("set", (), {"tags": {"a"}}, TypeError, 'kwargs["tags"]: set'),
    ("int key", ({1: "a"},), {}, TypeError, "dict key 1 (int)"),
    ("NaN", (1, float("nan")), {}, ValueError, "args[1]: nan is not valid JSON"),
    ("Infinity", (), {"x": [float("inf")]}, ValueError, 'kwargs["x"][0]: inf'),
    ("-Infinity", (), {"x": float("-inf")}, ValueError, 'kwargs["x"]: -inf'),
    ("lone surrogate", ("ok", "bad \ud800"), {}, ValueError, "args[1]: the string contains"),
    ("surrogate key", ({"\udc80": 1},), {}, ValueError, "lone surrogate"),
    ("deep nesting", (nested(100_000),), {}, ValueError, "nested deeper than 64 levels"),
    ("100 MB string", ("x" * (100 * MB),), {}, ValueError, "TASKS_MAX_ARGUMENT_BYTES"),
    ("many items", ([0] * (5 * MB),), {}, ValueError, "TASKS_MAX_ARGUMENT_BYTES"),
]


def test_hostile_arguments_are_refused_before_anything_is_sent(
    app: Flask, published: list[Any]
) -> None:
    for label, args, kwargs, error, where in HOSTILE:
        started = time.monotonic()
        with (
            app.test_request_context(headers={"X-User": "alice"}),
            pytest.raises(error) as info,
        ):
            echo.delay(*args, **kwargs)
        assert where in str(info.value), (label, str(info.value))
        assert time.monotonic() - started < 10, label  # refused, not encoded first
    assert published == []
    with app.app_context():
        assert tasks.store.list(owner="alice", limit=10).records == []
    # The same app still sends plain data.
    with app.test_request_context(headers={"X-User": "alice"}):
        handle = echo.delay(1, "two", {"three": [3.0]})
    assert len(published) == 1
    with app.app_context():
        assert [r.id for r in tasks.store.list(owner="alice", limit=10).records] == [handle.id]
