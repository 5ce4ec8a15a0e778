"""The broker or the record store goes away while tasks run, then comes back."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import faultkit
import pytest
from faultkit import Faults, all_in, private_redis, summary, wait_until

from apps import faults
from apps.brokers import REDIS_URL
from flask_tasks import BrokerUnavailable
from flask_tasks.state import TaskState

kit = faultkit.kit

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

PUBLISH_TIMEOUT = 2.0


def test_restart_a_redis_broker(kit: Faults, tmp_path: Path) -> None:
    """A private redis-server (AOF on every write) is the broker; the records live on the
    shared Redis. It is SIGKILLed while tasks run and started again: every task accepted
    before the outage ends ``succeeded``; ``delay()`` during the outage raises
    ``BrokerUnavailable`` within TASKS_PUBLISH_TIMEOUT and leaves no record behind.

    Runs on Redis only: the embedded broker has no server to restart (see the next
    test for its equivalent, a locked database), and a private RabbitMQ node (its own
    Erlang node name, cookie and data directory, ten seconds to boot) is more than this
    shared two-core CI box can afford; RabbitMQ redelivers unacked messages when a
    connection drops, the case the SIGKILL tests cover.
    """
    with private_redis(tmp_path / "broker") as server:
        app = kit.configure(
            "redis",
            TASKS_BROKER_URL=server.url,
            TASKS_STORE_URL=REDIS_URL,
            TASKS_RESULT_BACKEND=None,
            TASKS_PUBLISH_TIMEOUT=PUBLISH_TIMEOUT,
            TASKS_CELERY={
                "worker_prefetch_multiplier": 1,
                "broker_transport_options": {
                    "visibility_timeout": 10,
                    "unacked_restore_interval": 1,
                    "unacked_restore_throttle": 1,
                },
            },
        )
        kit.worker(concurrency=2)
        with app.app_context():
            ids = [faults.once.delay(f"t{i}", 0.2).id for i in range(30)]
            wait_until(lambda: kit.runs_of("t3"), 60, "tasks to start")
            server.stop()
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                faults.once.delay("during", 0)
            assert time.monotonic() - started < PUBLISH_TIMEOUT + 1.5
            time.sleep(1)  # the worker notices the outage
            server.start()
        wait_until(lambda: all_in(app, ids, TaskState.SUCCEEDED), 120, "all to succeed")
        assert not kit.runs_of("during")
        store = app.extensions["tasks"].store
        assert len(store.list(name=faults.once.name, limit=100).records) == 30
        assert all(len(kit.runs_of(f"t{i}")) == 1 for i in range(30)), summary(app, ids)


@pytest.mark.faults_long
def test_a_locked_embedded_database(kit: Faults) -> None:
    """The embedded broker's equivalent of an outage: another process holds the SQLite
    file's write lock for a while. ``delay()`` meanwhile raises ``BrokerUnavailable``
    within TASKS_PUBLISH_TIMEOUT; every task sent before ends ``succeeded``."""
    app = kit.configure("embedded", TASKS_PUBLISH_TIMEOUT=PUBLISH_TIMEOUT)
    kit.worker(concurrency=2)
    path = app.extensions["tasks"].settings.embedded_path
    with app.app_context():
        ids = [faults.once.delay(f"t{i}", 0.1).id for i in range(20)]
        wait_until(lambda: kit.runs_of("t1"), 60, "tasks to start")
        lock = sqlite3.connect(path, timeout=30)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            started = time.monotonic()
            with pytest.raises(BrokerUnavailable):
                faults.once.delay("during", 0)
            assert time.monotonic() - started < PUBLISH_TIMEOUT + 1.5
            time.sleep(2)
        finally:
            lock.rollback()
            lock.close()
    wait_until(lambda: all_in(app, ids, TaskState.SUCCEEDED), 120, "all to succeed")
    assert not kit.runs_of("during")
    assert all(len(kit.runs_of(f"t{i}")) == 1 for i in range(20)), summary(app, ids)


def test_record_store_outage(broker: str, kit: Faults, tmp_path: Path) -> None:
    """The records live on a private redis-server, SIGKILLed while tasks run and started
    again a few seconds later: every task still runs once and the worker keeps going;
    the final states written during the outage are written again once the store is back,
    so every record ends ``succeeded``."""
    with private_redis(tmp_path / "store") as server:
        app = kit.configure(
            broker,
            TASKS_STORE_URL=server.url,
            TASKS_RESULT_BACKEND=None,
            TASKS_WORKER_LOST_TIMEOUT=2,
        )
        worker = kit.worker(concurrency=2)
        with app.app_context():
            ids = [faults.once.delay(f"t{i}", 0.2).id for i in range(20)]
        wait_until(lambda: kit.runs_of("t2"), 60, "tasks to start")
        server.stop()
        wait_until(lambda: kit.runs_of("t12"), 60, "tasks to run during the outage")
        server.start()
        wait_until(lambda: all(kit.runs_of(f"t{i}") for i in range(20)), 60, "all to run")
        wait_until(lambda: all_in(app, ids, TaskState.SUCCEEDED), 60, "records to catch up")
        assert all(len(kit.runs_of(f"t{i}")) == 1 for i in range(20))
        assert worker.proc.poll() is None
        assert "recorded the final state of task" in worker.output
