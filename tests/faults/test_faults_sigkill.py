"""SIGKILL a worker (all of it, or one pool child) in the middle of a run."""

from __future__ import annotations

import os
import signal

import faultkit
import pytest
from faultkit import Faults, all_in, kill_group, records, summary, wait_until

from apps import faults
from flask_tasks.state import TaskState

kit = faultkit.kit

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]

N = 100
BOUND = 4  # max_retries=3 of apps.faults.again: at most 4 runs


def lost_worker_config(broker: str) -> dict[str, object]:
    """Short timeouts, so the test does not wait for the production ones.

    Redis delivers an unacked message again after its visibility timeout (10 s here, one
    hour by default); the embedded broker after its own (3 s here) once heartbeats stop;
    RabbitMQ as soon as the dead consumer's connection closes. Prefetching one message per
    process keeps messages from waiting, unacked, longer than Redis' timeout while the
    worker is alive.
    """
    transport: dict[str, object] = {}
    if broker == "redis":
        transport = {
            "visibility_timeout": 10,
            "unacked_restore_interval": 1,
            "unacked_restore_throttle": 1,
        }
    elif broker == "embedded":
        transport = {"visibility_timeout": 3}
    return {
        "TASKS_WORKER_LOST_TIMEOUT": 2,
        "TASKS_CELERY": {
            "worker_prefetch_multiplier": 1,
            "broker_transport_options": transport,
        },
    }


def test_sigkill_the_whole_worker(broker: str, kit: Faults) -> None:
    """100 idempotent tasks and one long non-idempotent task; the worker (main process
    and pool children) is SIGKILLed once a fifth of them are done, and a new worker
    started: every idempotent task ends ``succeeded``, none ran more than its bound; the
    non-idempotent task ran once and ends ``failed`` with a worker-lost error (the new
    worker's sweep, TASKS_WORKER_LOST_TIMEOUT after its last heartbeat)."""
    app = kit.configure(broker, **lost_worker_config(broker))
    worker = kit.worker(concurrency=3)
    with app.app_context():
        lone = faults.once.delay("lone", 600).id
        wait_until(lambda: kit.runs_of("lone"), 60, "the non-idempotent task to start")
        ids = [faults.again.delay(f"t{i}", 0.05).id for i in range(N)]
    wait_until(
        lambda: sum(1 for r in records(app, ids).values() if r and r.finished) >= N // 5,
        120,
        "a fifth of the tasks to finish",
    )
    kill_group(worker)
    started = sum(1 for i in range(N) if kit.runs_of(f"t{i}"))
    assert started < N, "the worker finished everything before it was killed"

    kit.worker(concurrency=3)
    wait_until(lambda: all_in(app, ids, TaskState.SUCCEEDED), 180, "all to succeed")
    assert all(1 <= len(kit.runs_of(f"t{i}")) <= BOUND for i in range(N))

    lone_record = wait_until(
        lambda: (r := records(app, [lone])[lone]) is not None and r.finished and r,
        60,
        "the non-idempotent task's record to end",
    )
    assert lone_record.state is TaskState.FAILED
    assert lone_record.error is not None
    assert lone_record.error.type == "WorkerLostError"
    assert "Worker lost" in lone_record.error.message
    assert len(kit.runs_of("lone")) == 1, summary(app, ids)


def _child_running(kit: Faults, key: str, parent: int) -> int:
    pids = kit.runs_of(key)
    assert pids and pids[-1] != parent
    return pids[-1]


def test_sigkill_one_pool_child(broker: str, kit: Faults) -> None:
    """SIGKILL the pool child running a non-idempotent task, then the one running an
    idempotent task, in the middle of 100 idempotent tasks: the non-idempotent task
    ends ``failed`` (``WorkerLostError``, reported by the worker's main process) and ran
    once; every idempotent task ends ``succeeded`` (retried once, as Celery 5.7's
    ``retry_on_worker_lost`` does) within its bound."""
    app = kit.configure(broker, **lost_worker_config(broker))
    worker = kit.worker(concurrency=3)
    parent = worker.proc.pid
    with app.app_context():
        lone = faults.once.delay("lone", 600).id
        victim = faults.again.delay("victim", 600).id
        wait_until(lambda: kit.runs_of("lone") and kit.runs_of("victim"), 60, "both to start")
        ids = [faults.again.delay(f"t{i}", 0.05).id for i in range(N)]
    wait_until(
        lambda: sum(1 for r in records(app, ids).values() if r and r.finished) >= N // 5,
        120,
        "a fifth of the tasks to finish",
    )
    os.kill(_child_running(kit, "lone", parent), signal.SIGKILL)
    lone_record = wait_until(
        lambda: (r := records(app, [lone])[lone]) is not None and r.finished and r,
        60,
        "the non-idempotent task to end",
    )
    assert lone_record.state is TaskState.FAILED
    assert lone_record.error is not None and lone_record.error.type == "WorkerLostError"
    assert len(kit.runs_of("lone")) == 1

    os.kill(_child_running(kit, "victim", parent), signal.SIGKILL)
    wait_until(lambda: len(kit.runs_of("victim")) >= 2, 60, "the idempotent task to run again")
    assert len(kit.runs_of("victim")) <= BOUND
    wait_until(lambda: all_in(app, ids, TaskState.SUCCEEDED), 180, "all to succeed")
    assert all(1 <= len(kit.runs_of(f"t{i}")) <= BOUND for i in range(N))
    victim_record = records(app, [victim])[victim]
    assert victim_record is not None and victim_record.state is TaskState.RUNNING
    assert victim_record.attempt == 2
    assert worker.proc.poll() is None, "the worker survived the loss of a child"
