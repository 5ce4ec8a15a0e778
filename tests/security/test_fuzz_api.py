"""Schemathesis against ``/tasks/openapi.json``: no 5xx, no answer outside the document.

Every operation is fuzzed with schema-valid (positive) and schema-violating (negative)
requests, seeded (``derandomize``) so a failure reproduces, on the WSGI app itself (no
server, no sockets: about 2,000 requests in well under a minute). Generated ids are mixed
with the ids of real tasks in every state, so 200, 202 and 409 bodies are checked against
the schema too, not only 404s.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import schemathesis
from flask import Flask, request
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup

from conftest import AppFactory
from flask_tasks import Tasks
from flask_tasks.testing import EagerTasks

pytestmark = [pytest.mark.security, pytest.mark.slow]

tasks = Tasks()

EXAMPLES_PER_RUN = 260  # 4 operations x 2 modes x 260 = 2,080 requests
MIN_REQUESTS = 2000
USER = "alice"


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
def explode() -> None:
    raise RuntimeError("it broke")


@tasks.owner_loader
def owner_from_header() -> str | None:
    return request.headers.get("X-User")


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    app = make_app()
    tasks.init_app(app)
    return app


def _seed(app: Flask) -> tuple[list[str], list[str]]:
    """Tasks of the user in every state; returns (finished ids, queued ids)."""
    finished, queued = [], []
    with app.test_request_context(headers={"X-User": USER}):
        with EagerTasks(app, propagate=False):
            finished += [add.delay(i, 1).id for i in range(3)]
            finished.append(explode.delay().id)
        queued += [add.delay(i, 2).id for i in range(6)]
        finished.append(queued.pop())
    for task_id in finished[-1:]:
        with app.app_context():
            tasks.cancel(task_id)  # a cancelled one
    return finished, queued


def _cursors(app: Flask) -> list[str]:
    client = app.test_client()
    found: list[str] = []
    url = "/tasks/?limit=1"
    while url and len(found) < 8:
        page = client.get(url, headers={"X-User": USER}).get_json()
        if page["next_cursor"]:
            found.append(page["next_cursor"])
        url = page["links"]["next"]
    assert found
    return found


def test_schemathesis_finds_no_server_error_and_no_schema_violation(app: Flask) -> None:
    finished, queued = _seed(app)
    cursors = _cursors(app)
    schema = schemathesis.openapi.from_wsgi("/tasks/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} == {
        "GET /tasks/",
        "GET /tasks/{task_id}",
        "GET /tasks/{task_id}/events",
        "POST /tasks/{task_id}/cancel",
    }
    requests = 0
    failures: dict[str, str] = {}
    started = time.monotonic()

    def fuzz(operation: Any, mode: GenerationMode, real_ids: list[str]) -> None:
        @settings(
            max_examples=EXAMPLES_PER_RUN,
            derandomize=True,  # seeded: the same requests every run
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(
            case=operation.as_strategy(generation_mode=mode),
            real=st.sampled_from([None, *real_ids]),
            user=st.sampled_from([USER, USER, "mallory", None]),
            pick=st.integers(0, 1000),
        )
        def run(case: Any, real: str | None, user: str | None, pick: int) -> None:
            nonlocal requests
            if real is not None and "task_id" in (case.path_parameters or {}):
                case.path_parameters["task_id"] = real
            query = case.query
            if mode is GenerationMode.POSITIVE and query and "cursor" in query:
                # A cursor is opaque: only one a page gave is valid (others are a 400,
                # see test_hostile_ids).
                query["cursor"] = cursors[pick % len(cursors)]
            headers = {"X-User": user} if user else {}
            requests += 1
            try:
                case.call_and_validate(headers=headers)
            except (Exception, FailureGroup) as exc:
                key = f"{operation.label} [{mode.value}]: {str(exc).splitlines()[2:4]}"
                failures.setdefault(key, str(exc)[:2000])

        run()

    for operation in operations:
        # A stream of a queued task only ends when the task does: fuzz streams with
        # finished tasks. Cancelling queued ones is fine (they become final).
        real_ids = finished if operation.label.endswith("/events") else finished + queued
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, real_ids)

    elapsed = time.monotonic() - started
    print(f"schemathesis: {requests} requests in {elapsed:.1f}s, {len(failures)} failures")
    assert not failures, "\n\n".join(failures.values())
    assert requests >= MIN_REQUESTS
