"""The Celery app that ``tests/test_transport.py`` runs in worker subprocesses.

Configured from environment variables, so one module serves every test:

``TRANSPORT_TEST_BROKER``   the broker URL (``tasksdb+...``)
``TRANSPORT_TEST_BACKEND``  the result backend URL
``TRANSPORT_TEST_OPTIONS``  the broker transport options, as JSON
``TRANSPORT_TEST_READY``    a file created once the worker consumes
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any

from celery import Celery
from celery.signals import worker_ready

import flask_tasks.transport  # noqa: F401  (registers the tasksdb+ scheme)

app = Celery("transport_worker_app")
app.conf.update(
    broker_url=os.environ["TRANSPORT_TEST_BROKER"],
    result_backend=os.environ["TRANSPORT_TEST_BACKEND"],
    broker_transport_options=json.loads(os.environ.get("TRANSPORT_TEST_OPTIONS", "{}")),
    worker_enable_remote_control=False,
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


@worker_ready.connect
def _ready(**kwargs: Any) -> None:
    pathlib.Path(os.environ["TRANSPORT_TEST_READY"]).touch()


@app.task(name="noop")
def noop(value: Any = None) -> Any:
    return value


@app.task(name="fan_out")
def fan_out(count: int) -> list[str]:
    """Publish ``count`` noop tasks from inside the worker (a forked child under prefork)."""
    return [noop.delay(i).id for i in range(count)]


@app.task(name="slow", bind=True, acks_late=True)
def slow(self: Any, first_seconds: float, log: str) -> int:
    """Log ``pid time redelivered`` to ``log``; on the first attempt only, sleep."""
    with open(log, "a+") as f:
        f.seek(0)
        first = not f.read()
        redelivered = bool(self.request.delivery_info.get("redelivered"))
        f.write(f"{os.getpid()} {time.time()} {redelivered}\n")
    if first:
        time.sleep(first_seconds)
    return os.getpid()
