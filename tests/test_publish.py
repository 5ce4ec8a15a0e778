"""What delay() does with bad arguments and with a broker it cannot reach."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from conftest import AppFactory, require_redis
from flask_tasks import BrokerUnavailable, ConfigError, PublishError, Tasks, TasksError

tasks = Tasks()


@tasks.task
def echo(value: Any, when: Any = None) -> Any:
    return value


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port that accepts connections and never answers (a hung broker)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


def closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def unreachable_app(make_app: AppFactory, url: str, timeout: float = 1.5) -> Flask:
    app = make_app(TASKS_BROKER_URL=url, TASKS_PUBLISH_TIMEOUT=timeout)
    tasks.init_app(app)
    return app


def assert_unavailable_within(app: Flask, timeout: float) -> BrokerUnavailable:
    started = time.monotonic()
    with app.app_context(), pytest.raises(BrokerUnavailable) as info:
        echo.delay(1)
    elapsed = time.monotonic() - started
    assert elapsed < timeout * 1.5 + 0.5, f"took {elapsed:.2f}s for a {timeout}s timeout"
    assert "Nothing was sent" in str(info.value)
    return info.value


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_refused_connection_raises_broker_unavailable(make_app: AppFactory, scheme: str) -> None:
    url = f"{scheme}://user:s3cret@127.0.0.1:{closed_port()}/0"
    error = assert_unavailable_within(unreachable_app(make_app, url), 1.5)
    assert isinstance(error, PublishError)
    assert isinstance(error, TasksError)
    assert isinstance(error, ConnectionError)
    assert "s3cret" not in str(error)  # the message is safe to log


@pytest.mark.parametrize("scheme", ["redis", "amqp"])
def test_hung_broker_raises_within_the_timeout(
    make_app: AppFactory, scheme: str, silent_server: int
) -> None:
    url = f"{scheme}://127.0.0.1:{silent_server}/0"
    assert_unavailable_within(unreachable_app(make_app, url), 1.5)


def test_locked_embedded_database_raises_within_the_timeout(make_app: AppFactory) -> None:
    app = make_app(TASKS_PUBLISH_TIMEOUT=1.5)
    tasks.init_app(app)
    with app.app_context():
        echo.delay("create the tables first")
    path = app.extensions["tasks"].settings.embedded_path
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        assert_unavailable_within(app, 1.5)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_non_json_argument_is_refused_before_anything_is_sent(make_app: AppFactory) -> None:
    import datetime

    app = make_app()
    tasks.init_app(app)
    with app.app_context(), pytest.raises(TypeError) as info:
        echo.delay(1, when={"at": datetime.datetime(2026, 1, 1)})
    assert str(info.value) == (
        'kwargs["when"]["at"]: datetime is not JSON serializable; pass an ISO 8601 string'
    )
    path = app.extensions["tasks"].settings.embedded_path
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("select name from sqlite_master")}
        if "kombu_message" in tables:
            assert db.execute("select count(*) from kombu_message").fetchone() == (0,)


def test_oversized_arguments_are_refused(make_app: AppFactory) -> None:
    app = make_app(TASKS_MAX_ARGUMENT_BYTES=1000)
    tasks.init_app(app)
    with app.app_context():
        with pytest.raises(ValueError, match="TASKS_MAX_ARGUMENT_BYTES limit of 1,000"):
            echo.delay("x" * 2000)
        with pytest.raises(ValueError, match="TASKS_MAX_ARGUMENT_BYTES"):
            echo.apply_async(("x" * 2000,))
        with pytest.raises(ValueError, match="TASKS_MAX_ARGUMENT_BYTES"):
            echo.s("x" * 2000).delay()


def test_wrong_arity_is_refused_at_delay(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    with app.app_context(), pytest.raises(TypeError):
        echo.delay(1, 2, 3)  # type: ignore[call-arg]


def test_refused_arguments_never_reach_redis(make_app: AppFactory) -> None:
    require_redis()
    import redis

    app = make_app("redis")
    tasks.init_app(app)
    queue = app.extensions["celery"].conf.task_default_queue
    with app.app_context(), pytest.raises(ValueError, match="not valid JSON"):
        echo.delay(float("nan"))
    client = redis.Redis.from_url(app.extensions["celery"].conf.broker_url)
    try:
        assert client.llen(queue) == 0
    finally:
        client.close()


def test_pickle_is_refused(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    conf = app.extensions["celery"].conf
    assert conf.task_serializer == "json"
    assert "pickle" not in conf.accept_content
    opted = make_app(
        TASKS_CELERY={"task_serializer": "pickle", "accept_content": ["json", "pickle"]}
    )
    with pytest.raises(ConfigError, match="task_serializer = 'pickle' is refused"):
        Tasks(opted)
