"""The claims of docs/security.md that no other test file proves: CSRF on cancel, what
non-debug answers leave out, pickle refused, event streams limited per client."""

from __future__ import annotations

import json
import pickle
import socket
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient
from flask_wtf.csrf import CSRFProtect, generate_csrf
from kombu import Connection, Producer

from conftest import AppFactory
from flask_tasks import ConfigError, Tasks, progress
from flask_tasks.sse import open_streams
from flask_tasks.testing import TasksWorker

pytestmark = pytest.mark.security

tasks = Tasks()
SECRET_ARGUMENT = "s3cr3t-argument-7f1c"
ran: list[str] = []


@tasks.task
def handle_payment(card: str) -> None:
    progress(1, 2, message="charging")
    raise RuntimeError("the payment provider said no")


@tasks.task
def wait_here() -> None:
    return None


@tasks.task
def mark_ran(marker: str) -> None:
    ran.append(marker)


@tasks.owner_loader
def owner_from_header() -> str | None:
    return request.headers.get("X-User")


ALICE = {"X-User": "alice"}


def queued(app: Flask, user: str | None = "alice") -> str:
    with app.test_request_context(headers={"X-User": user} if user else {}):
        return str(wait_here.delay().id)


# -- CSRF ---------------------------------------------------------------------------------


def csrf_app(make_app: AppFactory, **config: Any) -> Flask:
    app = make_app(SECRET_KEY="test", **config)
    CSRFProtect(app)
    app.add_url_rule("/token", "token", lambda: generate_csrf())
    tasks.init_app(app)
    return app


@pytest.mark.parametrize("check_default", [True, False])
def test_cancel_honours_flask_wtf_csrf(make_app: AppFactory, check_default: bool) -> None:
    """With CSRFProtect, cancel needs its token (also when WTF_CSRF_CHECK_DEFAULT is off)."""
    app = csrf_app(make_app, WTF_CSRF_CHECK_DEFAULT=check_default)
    client = app.test_client()
    task_id = queued(app)
    url = f"/tasks/{task_id}/cancel"
    missing = client.post(url, json={}, headers=ALICE)
    assert missing.status_code == 400
    assert missing.get_json()["error"]["code"] == "csrf_failed"
    wrong = client.post(url, json={}, headers={**ALICE, "X-CSRFToken": "forged"})
    assert wrong.status_code == 400
    assert client.get(f"/tasks/{task_id}", headers=ALICE).get_json()["state"] == "queued"
    token = client.get("/token").get_data(as_text=True)
    ok = client.post(url, json={}, headers={**ALICE, "X-CSRFToken": token})
    assert ok.status_code == 202
    assert ok.get_json()["state"] == "cancelled"


def test_an_exempt_api_is_left_alone(make_app: AppFactory) -> None:
    app = make_app(SECRET_KEY="test", WTF_CSRF_CHECK_DEFAULT=False)
    csrf = CSRFProtect(app)
    tasks.init_app(app)
    csrf.exempt(app.blueprints["tasks"])
    task_id = queued(app)
    response = app.test_client().post(f"/tasks/{task_id}/cancel", json={}, headers=ALICE)
    assert response.status_code == 202


def test_a_cross_site_form_cannot_cancel(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    client = app.test_client()
    task_id = queued(app)
    for content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "text/plain",
    ):
        response = client.post(
            f"/tasks/{task_id}/cancel",
            data="a=b",
            headers={**ALICE, "Content-Type": content_type},
        )
        assert response.status_code == 415
    assert client.get(f"/tasks/{task_id}", headers=ALICE).get_json()["state"] == "queued"
    assert client.post(f"/tasks/{task_id}/cancel", headers={**ALICE, "X-Requested-With": "x"})
    assert client.get(f"/tasks/{task_id}", headers=ALICE).get_json()["state"] == "cancelled"


# -- what answers leave out ---------------------------------------------------------------


def public_answers(client: FlaskClient, task_id: str) -> dict[str, bytes]:
    """Every public route of the API, about a failed task of alice's."""
    answers = {
        "status": client.get(f"/tasks/{task_id}", headers=ALICE),
        "list": client.get("/tasks/", headers=ALICE),
        "cancel": client.post(f"/tasks/{task_id}/cancel", json={}, headers=ALICE),
        "events": client.get(f"/tasks/{task_id}/events", headers=ALICE),
        "openapi": client.get("/tasks/openapi.json"),
        "not found": client.get(f"/tasks/{uuid.uuid4()}", headers=ALICE),
    }
    assert answers["cancel"].status_code == 409
    return {name: response.get_data() for name, response in answers.items()}


def test_no_traceback_argument_or_hostname_outside_debug(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    with TasksWorker(app) as worker:
        with app.test_request_context(headers=ALICE):
            handle = handle_payment.delay(SECRET_ARGUMENT)
        worker.wait(handle, timeout=30)
        hostname = worker.controller.hostname
    record = tasks_record(app, handle.id)
    assert record.error is not None and record.error.traceback  # the store has it...
    client = app.test_client()
    leaks = ("Traceback", 'File "', SECRET_ARGUMENT, hostname, f"@{socket.gethostname()}")
    for route, body in public_answers(client, handle.id).items():
        for leak in leaks:
            assert leak.encode() not in body, (route, leak)
    # ...and in debug mode, only the traceback is added.
    app.debug = True
    debug = public_answers(client, handle.id)
    status = json.loads(debug["status"])
    assert "Traceback" in status["error"]["traceback"]
    for body in debug.values():
        assert SECRET_ARGUMENT.encode() not in body
        assert hostname.encode() not in body


def tasks_record(app: Flask, task_id: str) -> Any:
    with app.app_context():
        return tasks.get(task_id)


# -- pickle -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        {"TASKS_CELERY": {"accept_content": ["json", "pickle"]}},
        {"CELERY": {"result_serializer": "pickle"}},
        {"CELERY_TASK_SERIALIZER": "pickle"},
        {"CELERY_ACCEPT_CONTENT": ["application/x-python-serialize"]},
        {"TASKS_CELERY": {"event_serializer": "PICKLE"}},
    ],
)
def test_pickle_in_the_config_is_a_config_error(make_app: AppFactory, config: Any) -> None:
    app = make_app(**config)
    with pytest.raises(ConfigError, match=r"pickle|python-serialize"):
        Tasks(app)


class _Payload:
    """Unpickling this creates a file: what an attacker's message would run instead."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (Path(self.path),))


def test_a_pickled_message_is_not_executed(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    tasks.init_app(app)
    celery_app = app.extensions["celery"]
    marker = tmp_path / "unpickled"
    task_id = str(uuid.uuid4())
    body = pickle.dumps(((_Payload(str(marker)),), {}, {}))
    headers = {"lang": "py", "task": mark_ran.name, "id": task_id, "root_id": task_id}
    with app.app_context(), TasksWorker(app) as worker:
        with Connection(celery_app.conf.broker_url) as connection:
            Producer(connection).publish(
                body,
                routing_key=celery_app.conf.task_default_queue,
                content_type="application/x-python-serialize",
                content_encoding="binary",
                headers=headers,
            )
        handle = mark_ran.delay("after")  # sent after it, on the same queue
        worker.assert_succeeded(handle, timeout=30)
        time.sleep(0.5)
    assert ran == ["after"]
    assert not marker.exists()
    assert tasks_record(app, task_id) is None


# -- event streams per client -------------------------------------------------------------


def test_event_streams_are_limited_per_client(make_app: AppFactory) -> None:
    app = make_app(TASKS_SSE_MAX_PER_CLIENT=2)
    tasks.init_app(app)
    client = app.test_client()
    alices, bobs, nobodys = queued(app, "alice"), queued(app, "bob"), queued(app, None)
    first = client.get(f"/tasks/{alices}/events", headers=ALICE, buffered=False)
    second = client.get(f"/tasks/{alices}/events", headers=ALICE, buffered=False)
    assert first.status_code == second.status_code == 200
    third = client.get(f"/tasks/{alices}/events", headers=ALICE)
    assert third.status_code == 429
    assert third.headers["Retry-After"] == "5"
    assert third.get_json()["error"]["code"] == "too_many_streams"
    assert open_streams(app) == {"owner:alice": 2}
    # Another user, and anonymous clients by address, have their own allowance.
    bob = client.get(f"/tasks/{bobs}/events", headers={"X-User": "bob"}, buffered=False)
    assert bob.status_code == 200
    from_a = [
        client.get(
            f"/tasks/{nobodys}/events",
            environ_overrides={"REMOTE_ADDR": "192.0.2.1"},
            buffered=False,
        )
        for _ in range(3)
    ]
    assert [r.status_code for r in from_a] == [200, 200, 429]
    from_b = client.get(f"/tasks/{nobodys}/events", environ_overrides={"REMOTE_ADDR": "192.0.2.2"})
    assert from_b.status_code == 200
    # A closed stream gives its place back, whether or not it was ever read. (Closed
    # last-opened first: the test client keeps each stream's request context pushed.)
    for response in (from_b, *reversed(from_a), bob, second):
        response.close()
    assert open_streams(app) == {"owner:alice": 1}
    again = client.get(f"/tasks/{alices}/events", headers=ALICE, buffered=False)
    assert again.status_code == 200
    assert client.get(f"/tasks/{alices}/events", headers=ALICE).status_code == 429
    again.close()
    first.close()
    assert open_streams(app) == {}


def test_no_stream_limit_when_zero(make_app: AppFactory) -> None:
    app = make_app(TASKS_SSE_MAX_PER_CLIENT=0)
    tasks.init_app(app)
    client = app.test_client()
    task_id = queued(app)
    streams = [
        client.get(f"/tasks/{task_id}/events", headers=ALICE, buffered=False) for _ in range(30)
    ]
    assert {r.status_code for r in streams} == {200}
    for response in reversed(streams):
        response.close()
