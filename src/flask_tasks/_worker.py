"""A Celery worker in a thread of this process: the dev worker and the test worker."""

from __future__ import annotations

import os
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from celery._state import _set_task_join_will_block
from celery.concurrency.thread import TaskPool
from celery.exceptions import WorkerShutdown

if TYPE_CHECKING:
    from .extension import FlaskCelery


class ThreadPool(TaskPool):  # type: ignore[misc]
    """Celery's ``threads`` pool whose threads know their worker's Celery app.

    Celery finds the app of a task run on a thread pool through its *current* app, which
    in a fresh thread is the process-wide default: the last app created. With two Flask
    apps in one process (tests, or the dev worker beside a second app), one worker would
    run the other's tasks. Each thread here starts with its own app as the current one.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.executor.shutdown(wait=False)
        self.executor: ThreadPoolExecutor = ThreadPoolExecutor(
            max_workers=self.limit,
            thread_name_prefix="flask-tasks-worker",
            initializer=self.app.set_current,
        )


def _warm_shutdown() -> None:
    raise WorkerShutdown()


class InProcessWorker:
    """One Celery ``WorkController`` running in a daemon thread of this process.

    ``pool`` is ``"threads"`` or ``"solo"``. It takes tasks from the app's own broker,
    like any worker. :meth:`stop` shuts it down from inside its own thread: broker
    clients are not thread-safe, and a stop issued from another thread can wait forever
    for a reply the worker's loop has read.
    """

    def __init__(
        self,
        celery_app: FlaskCelery,
        *,
        pool: str = "threads",
        concurrency: int = 2,
        name: str = "worker",
        **options: Any,
    ) -> None:
        from celery.worker import WorkController

        self.celery_app = celery_app
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.controller: Any = WorkController(
            app=celery_app,
            hostname=f"{name}-{os.getpid()}-{id(self):x}@{socket.gethostname()}",
            pool_cls=ThreadPool if pool == "threads" else pool,
            concurrency=concurrency,
            ready_callback=self._on_ready,
            without_heartbeat=True,
            without_mingle=True,
            without_gossip=True,
            **options,
        )
        self.thread = threading.Thread(target=self._run, name=f"flask-tasks-{name}", daemon=True)

    def _on_ready(self, consumer: Any) -> None:
        # Starting a pool marks the whole process as "inside a worker", where
        # result.get() is refused; this process also sends tasks, so undo that.
        _set_task_join_will_block(False)
        self.ready.set()

    def _run(self) -> None:
        self.celery_app.set_current()  # the solo pool runs tasks on this thread
        try:
            self.controller.start()
        except BaseException as exc:  # pragma: no cover - reported by start()
            self.error = exc
            self.ready.set()

    def start(self, ready_timeout: float | None = None) -> None:
        """Start the thread; with ``ready_timeout``, wait until it consumes."""
        self.thread.start()
        if ready_timeout is None:
            return
        if not self.ready.wait(ready_timeout) or self.error is not None:
            self.stop()
            raise RuntimeError(
                f"The worker did not start within {ready_timeout}s"
                + (f": {self.error!r}" if self.error is not None else "")
            )

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop taking tasks, hand back unacknowledged ones; True once the thread ended."""
        if self.thread.is_alive():
            hub = getattr(self.controller, "hub", None)
            if hub is not None and self.ready.is_set():
                hub.call_soon(_warm_shutdown)
            else:
                self.controller.stop(in_sighandler=False)
            self.thread.join(timeout)
        return not self.thread.is_alive()
