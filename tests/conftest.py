from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask

from apps.brokers import broker_config, service_error
from browser_support import (  # noqa: F401 - fixtures and a hook for tests/browser
    browser,
    live_server,
    page,
    pytest_collection_modifyitems,
)

IN_CI = os.environ.get("CI") == "true"


def require_service(name: str, host: str, port: int) -> None:
    """Skip when a local service is missing; in CI (CI=true), fail instead."""
    error = service_error(host, port)
    if error is not None:
        message = f"{name} is not reachable at {host}:{port}: {error}"
        if IN_CI:
            pytest.fail(f"{message} (CI=true: every service must be up)")
        pytest.skip(message)


def require_redis() -> None:
    require_service("Redis", "127.0.0.1", 6379)


def require_rabbitmq() -> None:
    require_service("RabbitMQ", "127.0.0.1", 5672)


def require_postgresql() -> None:
    require_service("PostgreSQL", "127.0.0.1", 5432)


def require_rabbitmq_and_postgresql() -> None:
    require_rabbitmq()
    require_postgresql()


REQUIRE = {
    "embedded": lambda: None,
    "redis": require_redis,
    "rabbitmq": require_rabbitmq_and_postgresql,
}


BROKERS = ["embedded", "redis", "rabbitmq"]


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    """Each test that uses this runs once per broker kind."""
    kind: str = request.param
    REQUIRE[kind]()
    return kind


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Any) -> Iterator[AppFactory]:
    """Build Flask apps whose instance folder (and embedded broker) lives in tmp_path.

    Their Celery apps are closed afterwards, so no broker connection outlives the test.
    """
    counter = iter(range(1000))
    made: list[Flask] = []

    def make(broker: str = "embedded", **config: Any) -> Flask:
        app = Flask(f"test_app_{next(counter)}", instance_path=str(tmp_path / "instance"))
        app.config.update(TESTING=True, TASKS_DEV_WORKER=False)
        REQUIRE[broker]()
        app.config.update(broker_config(broker))
        extra = config.pop("TASKS_CELERY", None)
        if extra:
            app.config["TASKS_CELERY"] = {**app.config.get("TASKS_CELERY", {}), **extra}
        app.config.update(config)
        made.append(app)
        return app

    yield make
    for app in made:
        close_app(app)


def close_app(app: Flask) -> None:
    """Close the broker, result backend and database connections an app holds."""
    db = app.extensions.get("sqlalchemy")
    if db is not None:
        with app.app_context():
            db.session.remove()
            for engine in db.engines.values():
                engine.dispose()
    celery_app = app.extensions.get("celery")
    if celery_app is None:
        return
    store = getattr(celery_app, "_tasks_store", None)
    if store is not None:
        with contextlib.suppress(Exception):
            if app.extensions["tasks"].settings.store_prefix != "flask_tasks":
                store.drop()  # a test's own prefix: its tables and keys go
        store.close()
    # Celery keeps one result backend per thread; close this thread's.
    backend = getattr(celery_app._local, "backend", None)
    consumer = getattr(backend, "result_consumer", None) if backend is not None else None
    if consumer is not None and getattr(consumer, "_connection", None) is not None:
        with contextlib.suppress(Exception):
            consumer.stop()
    celery_app.close()


@pytest.fixture(autouse=True)
def _collect_garbage() -> Iterator[None]:
    """Collect after each test, so an unclosed resource is reported by the test that leaked it."""
    yield
    gc.collect()
