"""A deploy: the worker gets SIGTERM (or SIGQUIT) in the middle of a run."""

from __future__ import annotations

import signal

import faultkit
import pytest
from faultkit import Faults, all_in, records, summary, wait_until

from apps import faults
from flask_tasks.state import TaskState

kit = faultkit.kit

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.timeout(300)]


def test_sigterm_loses_no_task(broker: str, kit: Faults) -> None:
    """SIGTERM (warm shutdown) while 30 tasks, idempotent or not, are queued or running:
    the running ones finish, the others stay in the queue, and a new worker runs them.
    Every task ends ``succeeded`` and ran exactly once."""
    app = kit.configure(broker, TASKS_CELERY={"worker_prefetch_multiplier": 4})
    worker = kit.worker(concurrency=2)
    with app.app_context():
        ids = [(faults.again if i % 2 else faults.once).delay(f"t{i}", 0.3).id for i in range(30)]
    wait_until(lambda: kit.runs_of("t4"), 60, "tasks to start")
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.proc.wait(60) == 0
    done = sum(1 for i in range(30) if kit.runs_of(f"t{i}"))
    assert done < 30, "everything ran before the shutdown"
    kit.worker(concurrency=2)
    wait_until(lambda: all_in(app, ids, TaskState.SUCCEEDED), 120, "all to succeed")
    assert all(len(kit.runs_of(f"t{i}")) == 1 for i in range(30)), summary(app, ids)


@pytest.mark.faults_long
def test_soft_shutdown_requeues_running_idempotent_tasks(broker: str, kit: Faults) -> None:
    """SIGQUIT (a cold shutdown; also SIGTERM under REMAP_SIGTERM=SIGQUIT) with the soft
    shutdown on: tasks that finish within worker_soft_shutdown_timeout finish; a long
    idempotent task still running is stopped and goes back to the queue, and the next
    worker runs it to ``succeeded`` (a second attempt, within its bound).

    Not on the embedded broker yet: there the worker did not exit within 60 s of SIGQUIT
    (a cold shutdown of the embedded transport hangs; to investigate).
    """
    if broker == "embedded":
        pytest.skip("a cold shutdown hangs on the embedded broker (known issue)")
    app = kit.configure(
        broker,
        TASKS_CELERY={"worker_soft_shutdown_timeout": 2.0},
    )
    worker = kit.worker(concurrency=2)
    with app.app_context():
        long_id = faults.again.delay("long", 8).id
        short_id = faults.again.delay("short", 0.5).id
    wait_until(lambda: kit.runs_of("long") and kit.runs_of("short"), 60, "both to start")
    worker.proc.send_signal(signal.SIGQUIT)
    worker.proc.wait(60)
    assert "Initiating Soft Shutdown" in worker.output
    short = records(app, [short_id])[short_id]
    assert short is not None and short.state is TaskState.SUCCEEDED
    assert len(kit.runs_of("long")) == 1
    kit.worker(concurrency=2)
    wait_until(lambda: all_in(app, [long_id], TaskState.SUCCEEDED), 120, "the long task")
    assert 2 <= len(kit.runs_of("long")) <= 4
    assert len(kit.runs_of("short")) == 1
