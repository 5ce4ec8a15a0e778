"""Knowing when a worker was lost: heartbeats of running tasks, and the sweep that ends
the records of tasks whose worker stopped sending them.

* Every process that runs tasks keeps a :class:`Heartbeats` thread: every quarter of
  ``TASKS_WORKER_LOST_TIMEOUT`` it refreshes ``updated_at`` of the records of the tasks
  it is running (one store call per store). It also retries the final writes that failed
  while the store was unreachable, so records catch up once it is back.
* Every worker runs :class:`WorkerLostSweep` (a Celery bootstep): every half timeout it
  lists ``running`` records and marks ``failed`` (``WorkerLostError``) those whose
  heartbeat is older than the timeout, for tasks that ack early (not idempotent): the
  broker never delivers those again, so nothing else would end their record. Tasks that
  ack late are left to the broker, which delivers them again.
* The same bootstep raises Redis' ``visibility_timeout`` above the longest task
  ``time_limit`` (unless it was set), so a long task that acks late is not delivered a
  second time while it still runs.

See ``docs/reliability.md`` for the promises and their limits.
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from billiard.exceptions import WorkerLostError
from celery import bootsteps

from .state import TaskState, utcnow
from .store.base import RecordStore, StoreError

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger("flask_tasks")

#: Most final writes kept for a retry while the store is unreachable (oldest dropped).
MAX_PENDING_WRITES = 10_000
#: Most running records one sweep looks at.
SWEEP_LIMIT = 5_000
#: Kombu's default Redis visibility timeout; the derived one is never lower.
REDIS_DEFAULT_VISIBILITY = 3600.0
#: Added to the longest time limit: a task killed at its limit must be acked first.
VISIBILITY_MARGIN = 300.0


class Heartbeats:
    """The running tasks of this process, and the thread that beats for them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[RecordStore, dict[str, int]]] = {}
        self._pending: list[tuple[RecordStore, str, Callable[[], Any]]] = []
        self._interval = 15.0
        self._pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._failing = False
        self._stopped = False

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread (waiting for a beat in progress); pending writes are kept."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _reset_after_fork(self) -> None:
        # A forked child inherits the registry but not the thread.
        self._lock = threading.Lock()
        self._running = {}
        self._pending = []
        self._thread = None
        self._wake = threading.Event()
        self._pid = os.getpid()

    def _ensure_thread(self, interval: float) -> None:
        if self._pid != os.getpid():
            self._reset_after_fork()
        self._interval = min(self._interval, interval) if self._thread else interval
        if self._stopped:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._run, name="flask-tasks-heartbeats", daemon=True
            )
            self._thread.start()

    def add(self, store: RecordStore, task_id: str, *, timeout: float) -> None:
        """``task_id`` runs in this process now (called as it starts)."""
        with self._lock:
            self._ensure_thread(timeout / 4)
            ids = self._running.setdefault(id(store), (store, {}))[1]
            ids[task_id] = ids.get(task_id, 0) + 1

    def remove(self, store: RecordStore, task_id: str) -> None:
        """``task_id`` stopped running here."""
        with self._lock:
            entry = self._running.get(id(store))
            if entry is None:
                return
            ids = entry[1]
            left = ids.get(task_id, 0) - 1
            if left > 0:
                ids[task_id] = left
            else:
                ids.pop(task_id, None)
                if not ids:
                    del self._running[id(store)]

    def retry_later(
        self, store: RecordStore, task_id: str, write: Callable[[], Any], *, timeout: float
    ) -> None:
        """Keep a final write that failed; it is tried again at each beat until it is done.

        Until then the task keeps its heartbeat, so no sweep takes it for lost.
        """
        with self._lock:
            self._ensure_thread(timeout / 4)
            if len(self._pending) >= MAX_PENDING_WRITES:
                dropped = self._pending.pop(0)
                logger.error(
                    "flask-tasks: too many record writes waiting for the store; the final "
                    "state of task %s is lost",
                    dropped[1],
                )
            self._pending.append((store, task_id, write))
        self._wake.set()

    def pending(self) -> int:
        """How many final writes wait for the store (tests, diagnostics)."""
        with self._lock:
            return len(self._pending)

    def _run(self) -> None:
        while True:
            self._wake.wait(self._interval)
            self._wake.clear()
            if self._pid != os.getpid() or self._stopped:
                return
            try:
                self.beat()
            except Exception:  # never let the thread die
                logger.exception("flask-tasks: the heartbeat of running tasks failed")

    def beat(self) -> None:
        """Refresh the running records, then retry pending final writes."""
        with self._lock:
            stores: dict[int, tuple[RecordStore, set[str]]] = {
                key: (store, set(ids)) for key, (store, ids) in self._running.items()
            }
            pending = list(self._pending)
        for store, task_id, _ in pending:
            stores.setdefault(id(store), (store, set()))[1].add(task_id)
        ok = True
        for store, ids in stores.values():
            try:
                store.touch_running(ids)
            except StoreError as exc:
                ok = False
                if not self._failing:
                    logger.warning("flask-tasks: could not send task heartbeats: %s", exc)
        done: list[tuple[RecordStore, str, Callable[[], Any]]] = []
        for item in pending:
            try:
                item[2]()
            except StoreError:
                ok = False
                break  # the store is still down; try again at the next beat
            done.append(item)
            logger.info("flask-tasks: recorded the final state of task %s late", item[1])
        if done:
            with self._lock:
                self._pending = [item for item in self._pending if item not in done]
        if not ok and not self._failing:
            self._failing = True
        elif ok and self._failing:
            self._failing = False
            logger.warning("flask-tasks: the record store answers again")


heartbeats = Heartbeats()


# -- the sweep ----------------------------------------------------------------------------


def lost_message(timeout: float) -> str:
    return (
        f"Worker lost: the worker running this task stopped (no heartbeat for {timeout:g}s). "
        "The task was not run again because it is not idempotent; "
        "declare it with @tasks.task(idempotent=True) to have it delivered again."
    )


def sweep(celery_app: Any, timeout: float, *, now: datetime.datetime | None = None) -> int:
    """Mark ``failed`` the running records, of tasks that ack early, whose heartbeat is
    older than ``timeout`` seconds; return how many. Raises :class:`StoreError`."""
    store: RecordStore = celery_app.tasks_store
    limit = now or utcnow()
    stale_before = limit - datetime.timedelta(seconds=timeout)
    marked = seen = 0
    cursor = None
    while seen < SWEEP_LIMIT:
        page = store.list(state=TaskState.RUNNING, limit=200, cursor=cursor)
        for record in page.records:
            seen += 1
            if record.updated_at >= stale_before or record.state is not TaskState.RUNNING:
                continue
            task = celery_app.tasks.get(record.name)
            if task is None or getattr(task, "acks_late", False):
                continue  # not ours to judge, or the broker delivers it again
            logger.warning(
                "flask-tasks: task %s[%s] lost its worker (no heartbeat since %s); marking "
                "it failed",
                record.name,
                record.id,
                record.updated_at.isoformat(),
            )
            celery_app.backend.mark_as_failure(
                record.id, WorkerLostError(lost_message(timeout)), call_errbacks=False
            )
            marked += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    return marked


def redis_visibility_timeout(celery_app: Any) -> float | None:
    """The visibility timeout a Redis broker needs, or None when nothing is to change.

    Never below Kombu's default (one hour); above it when a task's ``time_limit`` (or
    ``task_time_limit``) is longer, plus a margin.
    """
    conf = celery_app.conf
    url = str(conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://", "redis+socket://", "sentinel://")):
        return None
    if (conf.broker_transport_options or {}).get("visibility_timeout") is not None:
        return None
    limits = [conf.task_time_limit or 0]
    limits += [getattr(task, "time_limit", None) or 0 for task in celery_app.tasks.values()]
    longest = float(max(limits))
    wanted = longest + VISIBILITY_MARGIN
    return wanted if wanted > REDIS_DEFAULT_VISIBILITY else None


class WorkerLostSweep(bootsteps.StartStopStep):  # type: ignore[misc]
    """A worker step: the sweep of lost tasks, and Redis' visibility timeout.

    Sweeps start once the store has answered for a whole timeout, so every live worker
    has had the time to send its heartbeats after a store outage.
    """

    label = "flask-tasks worker-lost sweep"

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        app = worker.app
        visibility = redis_visibility_timeout(app)
        if visibility is not None:
            app.conf.broker_transport_options = {
                **(app.conf.broker_transport_options or {}),
                "visibility_timeout": visibility,
            }
            logger.info("flask-tasks: Redis visibility_timeout set to %gs", visibility)

    def start(self, worker: Any) -> None:
        app = worker.app
        settings = getattr(app, "tasks_settings", None)
        if settings is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run,
            args=(app, settings.worker_lost_timeout),
            name="flask-tasks-sweep",
            daemon=True,
        )
        self._thread.start()

    def stop(self, worker: Any) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    shutdown = stop

    def _run(self, app: Any, timeout: float) -> None:
        healthy_since: float | None = None
        while not self._stop.wait(timeout / 2):
            try:
                if healthy_since is None:
                    app.tasks_store.list(state=TaskState.RUNNING, limit=1)
                    healthy_since = time.monotonic()
                    continue
                if time.monotonic() - healthy_since < timeout:
                    app.tasks_store.list(state=TaskState.RUNNING, limit=1)
                    continue
                sweep(app, timeout)
            except StoreError as exc:
                healthy_since = None
                logger.warning("flask-tasks: could not sweep for lost tasks: %s", exc)
            except Exception:
                logger.exception("flask-tasks: the sweep for lost tasks failed")
