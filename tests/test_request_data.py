"""Request data in tasks: owner, request id, URL root, locale; request_context=True; logs."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from flask import Flask, request, url_for

from conftest import AppFactory
from flask_tasks import Tasks, current_task
from flask_tasks.testing import start_worker

tasks = Tasks()


@tasks.owner_loader
def owner() -> str | None:
    return request.headers.get("X-User")


@tasks.task
def who() -> dict[str, Any]:
    return {
        "id": current_task.id,
        "owner": current_task.owner,
        "request_id": current_task.request_id,
        "attempt": current_task.attempt,
        "locale": current_task.locale,
        "report": url_for("report", report_id=7, _external=True),
    }


@tasks.task
def parent() -> str:
    return str(who.delay().id)


@tasks.task(request_context=True)
def with_request() -> dict[str, Any]:
    return {
        "path": request.path,
        "method": request.method,
        "query": request.args.to_dict(),
        "headers": {k: v for k, v in request.headers.items() if k != "Host"},
        "url_root": request.url_root,
    }


seen: list[logging.LogRecord] = []


class Keep(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "test.request_data":
            seen.append(record)


@tasks.task
def logs() -> None:
    logging.getLogger("test.request_data").warning("inside")


def build(make_app: AppFactory, broker: str = "embedded", **config: Any) -> Flask:
    app = make_app(broker, **config)
    tasks.init_app(app)

    @app.get("/reports/<int:report_id>")
    def report(report_id: int) -> str:
        return str(report_id)

    return app


def send(app: Flask, task: Any, **headers: str) -> Any:
    with app.test_request_context(
        "/start/here?x=1",
        method="POST",
        base_url="https://shop.example.com/app",
        headers=headers,
    ):
        return task.delay()


def test_request_data_reaches_the_task(make_app: AppFactory, broker: str) -> None:
    app = build(make_app, broker)
    handle = send(app, who, **{"X-User": "alice", "X-Request-ID": "req-42"})
    with start_worker(app), app.app_context():
        data = handle.get(timeout=20, interval=0.01)
    assert data["id"] == handle.id
    assert data["owner"] == "alice"
    assert data["request_id"] == "req-42"
    assert data["attempt"] == 1
    # url_for(_external=True) without SERVER_NAME, from the sending request's URL root
    assert data["report"] == "https://shop.example.com/app/reports/7"


def test_a_request_id_is_made_up_once_per_request(make_app: AppFactory) -> None:
    app = build(make_app)
    with app.test_request_context("/", headers={"X-Request-ID": "has spaces, refused"}):
        first, second = who.delay(), who.delay()
    with start_worker(app), app.app_context():
        a = first.get(timeout=20, interval=0.01)
        b = second.get(timeout=20, interval=0.01)
    assert a["request_id"] == b["request_id"]
    assert len(a["request_id"]) == 32


def test_a_task_sent_by_a_task_inherits_the_request_data(make_app: AppFactory) -> None:
    app = build(make_app)
    handle = send(app, parent, **{"X-User": "bob", "X-Request-ID": "chain-1"})
    with start_worker(app), app.app_context():
        child_id = handle.get(timeout=20, interval=0.01)
        child = who.AsyncResult(child_id).get(timeout=20, interval=0.01)
        record = tasks.get(child_id)
    assert (child["owner"], child["request_id"]) == ("bob", "chain-1")
    assert record is not None and record.owner == "bob"


def test_request_context_tasks_get_a_rebuilt_request(make_app: AppFactory, broker: str) -> None:
    app = build(make_app, broker)
    handle = send(
        app,
        with_request,
        **{
            "Accept-Language": "fr",
            "Cookie": "session=secret",
            "Authorization": "Bearer secret",
        },
    )
    with start_worker(app), app.app_context():
        data = handle.get(timeout=20, interval=0.01)
    assert data["path"] == "/start/here"
    assert data["method"] == "POST"
    assert data["query"] == {"x": "1"}
    assert data["url_root"] == "https://shop.example.com/app/"
    assert data["headers"].get("Accept-Language") == "fr"
    assert "Cookie" not in data["headers"]  # nothing secret travels unless configured
    assert "Authorization" not in data["headers"]


def test_listed_headers_travel(make_app: AppFactory) -> None:
    app = build(make_app, TASKS_REQUEST_HEADERS=["Authorization", "Accept-Language"])
    handle = send(app, with_request, Authorization="Bearer t")
    with start_worker(app), app.app_context():
        data = handle.get(timeout=20, interval=0.01)
    assert data["headers"]["Authorization"] == "Bearer t"


def test_log_records_in_tasks_carry_task_and_request_ids(make_app: AppFactory) -> None:
    app = build(make_app)
    handler = Keep()
    logging.getLogger("test.request_data").addHandler(handler)
    seen.clear()
    try:
        handle = send(app, logs, **{"X-Request-ID": "log-7"})
        with start_worker(app), app.app_context():
            handle.get(timeout=20, interval=0.01)
        logging.getLogger("test.request_data").warning("outside")
    finally:
        logging.getLogger("test.request_data").removeHandler(handler)
    inside, outside = seen
    assert (inside.task_id, inside.request_id) == (handle.id, "log-7")  # type: ignore[attr-defined]
    assert inside.task_name == logs.name  # type: ignore[attr-defined]
    assert (outside.task_id, outside.request_id) == (None, None)  # type: ignore[attr-defined]


def test_eager_tasks_see_the_same_data(make_app: AppFactory) -> None:
    app = build(make_app, CELERY_TASK_ALWAYS_EAGER=True)
    data = send(app, who, **{"X-User": "carol", "X-Request-ID": "eager-1"}).get()
    assert (data["owner"], data["request_id"]) == ("carol", "eager-1")
    assert data["report"] == "https://shop.example.com/app/reports/7"


def test_locale_with_flask_babel(make_app: AppFactory) -> None:
    from flask_babel import Babel

    app = build(make_app, CELERY_TASK_ALWAYS_EAGER=True)
    Babel(app, locale_selector=lambda: request.accept_languages.best_match(["de", "en"]))
    data = send(app, who, **{"Accept-Language": "de"}).get()
    assert data["locale"] == "de"


def test_current_task_outside_a_task() -> None:
    assert not current_task
    with pytest.raises(RuntimeError, match="Working outside of a task"):
        current_task.id  # noqa: B018
