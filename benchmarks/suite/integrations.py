"""The integrations compared, how each one's web app and workers are started, and how it is
set up (the text the report shows). Nothing here imports a peer: only the subprocesses do.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

APPS = "benchmarks.suite.apps"
PY = sys.executable


@dataclass(frozen=True)
class WorkerSetup:
    """One way of running an integration's workers: a row of the worker-side tables."""

    key: str
    label: str
    commands: tuple[tuple[str, ...], ...] = ()
    """One argv per process to start (empty: the tasks run in the web process)."""
    env: tuple[tuple[str, str], ...] = ()
    setup: str = ""
    tuned: bool = False
    drain_tasks: int | None = None
    """Tasks for the drain when the full 10,000 would take too long (then one run)."""
    e2e_samples: int | None = None
    progress_only: bool = False


@dataclass(frozen=True)
class Integration:
    key: str
    label: str
    module: str
    factory: str
    status_path: str
    finished: Callable[[Any], bool]
    setup: str
    status_note: str
    workers: tuple[WorkerSetup, ...]
    web_processes: int = 2
    web_threads: int = 4
    durable: bool = True
    progress: str | None = None
    """How progress is reported, or None when the integration has no progress API."""
    no_progress_reason: str = ""
    in_quick: bool = False
    env: tuple[tuple[str, str], ...] = field(default=())
    only: frozenset[str] = frozenset()
    """The workloads this row takes part in (empty: all of them)."""

    def takes(self, workload: str) -> bool:
        return not self.only or workload in self.only

    @property
    def target(self) -> str:
        return f"{self.module}:{self.factory}"


def _flask(target: str, *args: str) -> tuple[str, ...]:
    return (PY, "-m", "flask", "--app", target, *args)


def _get(data: Any, key: str) -> Any:
    return data.get(key) if isinstance(data, dict) else None


FT = f"{APPS}.flask_tasks_app"
OFFICIAL = f"{APPS}.celery_official"
CELERYEXT = f"{APPS}.celeryext"
RQ = f"{APPS}.rq_app"
DRAMATIQ = f"{APPS}.dramatiq_app"
EXECUTOR = f"{APPS}.executor_app"

TUNED_PREFETCH = "256"

INTEGRATIONS: tuple[Integration, ...] = (
    Integration(
        key="flask-tasks",
        label="flask-tasks",
        module=FT,
        factory="create_app",
        status_path="/tasks/{id}",
        finished=lambda d: _get(d, "state") == "succeeded",
        setup=(
            "`TASKS_BROKER_URL` and `TASKS_RESULT_BACKEND` on Redis (docs/deployment.md); the "
            "record store is the result backend. `@tasks.task`, `noop.delay()`."
        ),
        status_note=(
            "its own route (the whole record); each web process caches records it "
            "read: a finished one for 10 s, a queued or running one for half its age, 0.2 s "
            "at most (4,096 at most)"
        ),
        workers=(
            WorkerSetup(
                key="flask-tasks",
                label="flask-tasks",
                commands=(_flask(f"{FT}:create_app", "tasks", "worker", "--concurrency", "2"),),
                setup="`flask tasks worker --concurrency 2` (Celery prefork, 2 processes)",
            ),
            WorkerSetup(
                key="flask-tasks-interval-0",
                label="flask-tasks, TASKS_PROGRESS_INTERVAL = 0",
                commands=(_flask(f"{FT}:create_app", "tasks", "worker", "--concurrency", "2"),),
                env=(("BENCH_PROGRESS_INTERVAL", "0"),),
                setup="as above, with the progress throttle off: every call writes",
                tuned=True,
                progress_only=True,
            ),
        ),
        progress="`progress(i, n)` (throttled: one write per `TASKS_PROGRESS_INTERVAL`, 0.2 s)",
        in_quick=True,
    ),
    Integration(
        key="flask-tasks-fresh",
        label="flask-tasks, no status cache for unfinished tasks",
        module=FT,
        factory="create_fresh_app",
        status_path="/tasks/{id}",
        finished=lambda d: _get(d, "state") == "succeeded",
        setup=(
            "as flask-tasks, with `TASKS_PROGRESS_INTERVAL = 0` in the web app only: its "
            "status view then keeps no queued or running record (end to end only)"
        ),
        status_note=(
            "its own route; every read of an unfinished task goes to Redis (a finished one "
            "is still cached 10 s)"
        ),
        workers=(
            WorkerSetup(
                key="flask-tasks-fresh",
                label="flask-tasks, no status cache for unfinished tasks",
                commands=(_flask(f"{FT}:create_app", "tasks", "worker", "--concurrency", "2"),),
                setup="the flask-tasks worker, unchanged",
            ),
        ),
        progress=None,
        no_progress_reason="the same worker as flask-tasks: see its row",
        in_quick=True,
        only=frozenset({"e2e"}),
    ),
    Integration(
        key="flask-tasks-embedded",
        label="flask-tasks, embedded SQLite",
        module=FT,
        factory="create_embedded_app",
        status_path="/tasks/{id}",
        finished=lambda d: _get(d, "state") == "succeeded",
        setup=(
            "no broker configured: the embedded SQLite broker and record store in the instance "
            "folder (the default; `TASKS_DEV_WORKER = False` under gunicorn)"
        ),
        status_note="as above, records read from SQLite",
        workers=(
            WorkerSetup(
                key="flask-tasks-embedded",
                label="flask-tasks, embedded SQLite",
                commands=(
                    _flask(f"{FT}:create_embedded_app", "tasks", "worker", "--concurrency", "2"),
                ),
                setup="`flask tasks worker --concurrency 2` on the same SQLite file",
            ),
        ),
        progress="`progress(i, n)`, written to SQLite",
    ),
    Integration(
        key="official",
        label="official pattern (raw Celery)",
        module=OFFICIAL,
        factory="create_app",
        status_path="/result/{id}",
        finished=lambda d: _get(d, "ready") is True,
        setup=(
            "Flask's docs, *Background Tasks with Celery*: `celery_init_app(app)`, "
            "`CELERY = {broker_url, result_backend: Redis, task_ignore_result: True}`, "
            "`@shared_task(ignore_result=False)`"
        ),
        status_note="the docs' `GET /result/<id>` (`AsyncResult`: ready, successful, value)",
        workers=(
            WorkerSetup(
                key="official",
                label="official pattern (raw Celery)",
                commands=(
                    (PY, "-m", "celery", "-A", f"{OFFICIAL}:celery_app", "worker", "-c", "2"),
                ),
                setup="`celery -A make_celery worker -c 2` (prefork, 2 processes)",
            ),
        ),
        progress='`self.update_state(state="PROGRESS", meta={current, total})` (bind=True)',
        in_quick=True,
    ),
    Integration(
        key="celeryext",
        label="Flask-CeleryExt",
        module=CELERYEXT,
        factory="create_app",
        status_path="/result/{id}",
        finished=lambda d: _get(d, "ready") is True,
        setup=(
            "`FlaskCeleryExt().init_app(app)`, `CELERY_BROKER_URL` / `CELERY_RESULT_BACKEND` "
            "on Redis, `@shared_task` (Invenio's way)"
        ),
        status_note="none of its own: Flask's docs' `AsyncResult` route",
        workers=(
            WorkerSetup(
                key="celeryext",
                label="Flask-CeleryExt",
                commands=(
                    (PY, "-m", "celery", "-A", f"{CELERYEXT}:celery_app", "worker", "-c", "2"),
                ),
                setup="`celery -A ... worker -c 2` (prefork, 2 processes)",
            ),
        ),
        progress='`self.update_state(state="PROGRESS", meta={current, total})` (bind=True)',
    ),
    Integration(
        key="flask-rq",
        label="flask-rq (RQ)",
        module=RQ,
        factory="create_app",
        status_path="/jobs/{id}",
        finished=lambda d: _get(d, "status") == "finished",
        setup="`RQ().init_app(app)`, `RQ_CONNECTION` = Redis URL, `@rq.job`, `.enqueue()`",
        status_note=(
            "none of its own: RQ's docs' route (`queue.fetch_job(id)`, `get_status()`, "
            "`return_value()`)"
        ),
        workers=(
            WorkerSetup(
                key="flask-rq-default",
                label="flask-rq, default worker",
                commands=(
                    _flask(f"{RQ}:create_app", "rq", "worker", "--results-ttl", "3600"),
                    _flask(f"{RQ}:create_app", "rq", "worker", "--results-ttl", "3600"),
                ),
                setup=(
                    "default: two `flask rq worker` processes; Flask-RQ 1.0 runs each job in "
                    "a new `flask rq work-horse` subprocess (plain RQ forks one per job)"
                ),
                drain_tasks=100,
                e2e_samples=20,
            ),
            WorkerSetup(
                key="flask-rq-tuned",
                label="flask-rq, tuned (SimpleWorker)",
                commands=(
                    (PY, "-c", f"from {RQ} import run_simple_worker; run_simple_worker()"),
                    (PY, "-c", f"from {RQ} import run_simple_worker; run_simple_worker()"),
                ),
                setup=(
                    "tuned: two processes of the docs' worker script (an app context around a "
                    "worker made in code) with RQ's `SimpleWorker`: jobs run in the worker"
                ),
                tuned=True,
            ),
        ),
        progress="`job.meta['progress'] = {...}; job.save_meta()` (RQ's docs)",
    ),
    Integration(
        key="flask-dramatiq",
        label="Flask-Dramatiq",
        module=DRAMATIQ,
        factory="create_app",
        status_path="/messages/{id}",
        finished=lambda d: _get(d, "done") is True,
        setup=(
            "`DRAMATIQ_BROKER = RedisBroker`, `DRAMATIQ_BROKER_URL`; `Results(backend="
            "RedisBackend())` added to the default middleware; `@dramatiq.actor("
            "store_results=True)`, `.send()`"
        ),
        status_note=(
            "none of its own: `results_backend.get_result(message, block=False)` on the "
            "message rebuilt from its id (Dramatiq's docs read results from the message)"
        ),
        workers=(
            WorkerSetup(
                key="flask-dramatiq-default",
                label="Flask-Dramatiq, default",
                commands=(_flask(f"{DRAMATIQ}:create_app", "worker", "--processes", "2"),),
                setup=(
                    "default: `flask worker --processes 2` (8 threads each; Dramatiq "
                    "prefetches 2 messages per thread)"
                ),
            ),
            WorkerSetup(
                key="flask-dramatiq-tuned",
                label=f"Flask-Dramatiq, tuned (prefetch {TUNED_PREFETCH})",
                commands=(_flask(f"{DRAMATIQ}:create_app", "worker", "--processes", "2"),),
                env=(("dramatiq_queue_prefetch", TUNED_PREFETCH),),
                setup=(
                    f"tuned: as above with `dramatiq_queue_prefetch={TUNED_PREFETCH}` "
                    "(messages fetched per round trip)"
                ),
                tuned=True,
            ),
        ),
        no_progress_reason=(
            "Dramatiq has no progress API (its Results middleware stores the return value "
            "only); a user would write progress to a key of their own, which measures Redis, "
            "not the integration"
        ),
    ),
    Integration(
        key="flask-executor",
        label="Flask-Executor (threads, not durable)",
        module=EXECUTOR,
        factory="create_app",
        status_path="/futures/{id}",
        finished=lambda d: _get(d, "done") is True,
        setup=(
            "`Executor(app)`, `EXECUTOR_MAX_WORKERS = 2` threads in the web process, "
            "`submit_stored(key, fn)`; `EXECUTOR_FUTURES_MAX_LENGTH = 20000` (default: the "
            "last 50 futures only)"
        ),
        status_note=(
            "the docs' route (`executor.futures.done(key)`, `.result(key)`), without "
            "`pop()` so a finished task can be polled again"
        ),
        workers=(
            WorkerSetup(
                key="flask-executor",
                label="Flask-Executor (threads, not durable)",
                setup="no worker: 2 threads in the web process",
            ),
        ),
        web_processes=1,
        web_threads=8,
        durable=False,
        no_progress_reason="Flask-Executor has no progress API (a future has a result only)",
    ),
)

REFERENCE = "flask-tasks"
"""The row every ratio is taken against."""
