"""Helpers for testing apps that use flask-tasks.

Two ways to run an app's tasks in a test, each with the same waiting and assertion
helpers (:class:`TaskChecks`):

* :class:`TasksWorker`: a real Celery worker in a thread of the test process, on the
  app's own broker (the embedded SQLite file, ``memory://``, Redis, RabbitMQ);
* :class:`EagerTasks`: eager mode (``task_always_eager``) switched on for a while, that
  still writes task records and runs tasks in the caller's app context.

The pytest plugin (:mod:`flask_tasks.pytest_plugin`) wraps them in the ``tasks_worker``
and ``tasks_eager`` fixtures. Nothing here imports pytest.
"""

from __future__ import annotations

import json
import re
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

from celery.exceptions import WorkerShutdown
from celery.worker.loops import synloop

from ._worker import InProcessWorker
from .state import TaskRecord, TaskState

if TYPE_CHECKING:
    from types import TracebackType

    from flask import Flask

    from .extension import FlaskCelery, TasksState
    from .store.base import RecordStore
    from .task import TaskResult

    TaskRef = str | TaskResult[Any]

FAST_POLLING_INTERVAL: Final = 0.01
"""Seconds a test worker sleeps after an empty poll of a polling transport (``memory://``)."""
WAIT_INTERVAL: Final = 0.01
"""Seconds between two reads of a record while waiting for it to finish."""
_DRAIN_SLICE: Final = 0.05
"""Seconds a worker without an event loop waits for messages before it checks for a stop."""
_MISSING: Final[Any] = object()


def tasks_state(app: Flask) -> TasksState:
    """The flask-tasks state of ``app``; a ``RuntimeError`` saying how to fix it otherwise."""
    from flask import Flask

    if not isinstance(app, Flask):
        raise RuntimeError(
            f"Expected a Flask app, got {app!r}. Pass the app itself (the one your app "
            "factory returns), not the factory or a test client."
        )
    state: TasksState | None = app.extensions.get("tasks")
    if state is None:
        raise RuntimeError(
            f"The Flask app {app.name!r} does not use flask-tasks. Did you forget to call "
            "'tasks.init_app(app)' in the app factory?"
        )
    return state


# -- waiting and asserting ----------------------------------------------------------------


class TaskChecks:
    """Wait for the tasks of one Flask app to finish, and assert how they ended.

    Every method takes a task id or the handle ``delay()`` / ``apply_async()`` returned,
    and reads the task's record from the app's record store (no app context needed).
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.state = tasks_state(app)

    @property
    def celery(self) -> FlaskCelery:
        """The app's Celery app."""
        return self.state.celery

    @property
    def store(self) -> RecordStore:
        """The app's record store."""
        return self.state.store

    def record(self, task: TaskRef) -> TaskRecord | None:
        """The task's record as it is now (None when the store has none)."""
        return self.store.get(_task_id(task))

    def wait(self, task: TaskRef, timeout: float = 10.0) -> TaskRecord:
        """Wait until the task's record is final (succeeded, failed or cancelled).

        Returns the record. Raises :class:`TimeoutError`, naming the task's last state,
        when it is not final within ``timeout`` seconds.
        """
        __tracebackhide__ = True
        task_id = _task_id(task)
        deadline = time.monotonic() + timeout
        while True:
            record = self.store.get(task_id)
            if record is not None and record.finished:
                return record
            self._check_running()
            if time.monotonic() >= deadline:
                raise TimeoutError(self._timeout_message(task_id, record, timeout))
            time.sleep(WAIT_INTERVAL)

    def assert_succeeded(
        self, task: TaskRef, result: Any = _MISSING, *, timeout: float = 10.0
    ) -> TaskRecord:
        """Wait for the task and assert that it succeeded, with ``result`` when given.

        ``result`` is compared with the recorded return value as JSON (a returned tuple
        is recorded as a list, so ``result=(1, 2)`` and ``result=[1, 2]`` both match).
        Returns the record.
        """
        __tracebackhide__ = True
        record = self.wait(task, timeout)
        if record.state is not TaskState.SUCCEEDED:
            raise AssertionError(
                f"{_label(record)} {_outcome(record)}; expected it to succeed."
                + _traceback(record)
            )
        if result is not _MISSING and not _same_json(record.result, result):
            raise AssertionError(
                f"{_label(record)} succeeded with result {record.result!r}; expected {result!r}."
            )
        return record

    def assert_failed(
        self,
        task: TaskRef,
        error_type: type[BaseException] | str | None = None,
        *,
        match: str | re.Pattern[str] | None = None,
        timeout: float = 10.0,
    ) -> TaskRecord:
        """Wait for the task and assert that it failed.

        ``error_type`` is an exception class or its name, compared with the name of the
        recorded error (``ValueError`` or ``"ValueError"``; a subclass does not match).
        ``match`` is a regular expression searched in the error message, as in
        ``pytest.raises``. Returns the record.
        """
        __tracebackhide__ = True
        record = self.wait(task, timeout)
        expected = _error_name(error_type)
        if record.state is not TaskState.FAILED:
            wanted = f" with {expected}" if expected else ""
            raise AssertionError(
                f"{_label(record)} {_outcome(record)}; expected it to fail{wanted}."
            )
        error = record.error
        error_type_name = error.type if error is not None else None
        message = error.message if error is not None else ""
        if expected is not None and error_type_name != expected:
            raise AssertionError(
                f"{_label(record)} failed with {_error_line(record)}; expected {expected}."
                + _traceback(record)
            )
        if match is not None and not re.search(match, message):
            pattern = match.pattern if isinstance(match, re.Pattern) else match
            raise AssertionError(
                f"{_label(record)} failed with {_error_line(record)}; the message does "
                f"not match {pattern!r}." + _traceback(record)
            )
        return record

    def assert_cancelled(self, task: TaskRef, *, timeout: float = 10.0) -> TaskRecord:
        """Wait for the task and assert that it ended cancelled. Returns the record."""
        __tracebackhide__ = True
        record = self.wait(task, timeout)
        if record.state is not TaskState.CANCELLED:
            raise AssertionError(
                f"{_label(record)} {_outcome(record)}; expected it to be cancelled."
                + _traceback(record)
            )
        return record

    # -- what the subclasses add to the messages -------------------------------------------

    def _check_running(self) -> None:
        """Raise when nothing can run the task any more (a worker that died)."""

    def _waiting_hint(self, record: TaskRecord) -> str:
        return ""

    def _timeout_message(self, task_id: str, record: TaskRecord | None, timeout: float) -> str:
        if record is None:
            return (
                f"Task [{task_id}] has no record in the store of app {self.app.name!r} after "
                f"{timeout:g}s. Was it sent by this app (inside its app context, or with "
                "the task handle of this app)?"
            )
        return (
            f"{_label(record)} did not finish within {timeout:g}s: its record is still "
            f"{_describe(record)}." + self._waiting_hint(record)
        )


# -- a worker -----------------------------------------------------------------------------


class _TestWorker(InProcessWorker):
    """The in-process worker, tuned for tests: it picks tasks up and stops quickly.

    * A transport that polls (``memory://``) polls every 10 ms.
    * Without an event loop (the embedded and ``memory://`` transports), Celery's loop
      waits for messages 2 s at a time and only then sees a stop: a stop would take up to
      2 s. This worker waits in short slices, and stops from its own thread, at the next
      slice, as a stop through the event loop does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stopping = threading.Event()
        consumer = self.controller.consumer
        self._sliced = consumer.loop is synloop
        consumer.loop = self._tuned(consumer.loop)

    def _tuned(self, loop: Any) -> Any:
        def tuned_loop(consumer: Any, connection: Any, *args: Any) -> Any:
            # On the worker's thread, each time the consumer (re)connects.
            transport: Any = getattr(connection, "transport", None)
            interval = getattr(transport, "polling_interval", None)
            if isinstance(interval, (int, float)) and interval > FAST_POLLING_INTERVAL:
                transport.polling_interval = FAST_POLLING_INTERVAL
            if self._sliced:
                connection.drain_events = self._sliced_drain(connection.drain_events)
            return loop(consumer, connection, *args)

        return tuned_loop

    def _sliced_drain(self, drain_events: Any) -> Any:
        def sliced(**kwargs: Any) -> Any:
            if self._stopping.is_set():
                raise WorkerShutdown()
            timeout = kwargs.get("timeout")
            kwargs["timeout"] = _DRAIN_SLICE if timeout is None else min(timeout, _DRAIN_SLICE)
            return drain_events(**kwargs)

        return sliced

    def stop(self, timeout: float = 15.0) -> bool:
        if self._sliced and self.ready.is_set() and self.thread.is_alive():
            self._stopping.set()
            self.thread.join(timeout)
            return not self.thread.is_alive()
        return super().stop(timeout)


def app_queues(celery_app: Any) -> list[str]:
    """The queues an app's tasks go to: the default one, ``task_queues``, the ``queue``
    options of its tasks and of ``task_routes`` given as a mapping (functions aside)."""
    conf = celery_app.conf
    names = [conf.task_default_queue]
    names.extend(getattr(queue, "name", queue) for queue in conf.task_queues or ())
    for task in celery_app.tasks.values():
        names.append(_queue_name((getattr(task, "default_routing", None) or {}).get("queue")))
    routes = conf.task_routes
    for table in routes if isinstance(routes, (list, tuple)) else (routes,):
        if isinstance(table, dict):
            for route in table.values():
                if isinstance(route, dict):
                    names.append(_queue_name(route.get("queue")))
                elif isinstance(route, str):
                    names.append(route)
    return list(dict.fromkeys(name for name in names if name))


def _queue_name(queue: Any) -> str | None:
    name = getattr(queue, "name", queue)
    return name if isinstance(name, str) else None


class TasksWorker(TaskChecks):
    """A real Celery worker for ``app`` in a thread of this process, with :class:`TaskChecks`.

    It consumes from the app's own broker, like ``flask tasks worker`` would, from every
    queue the app's tasks are routed to (see :func:`app_queues`) unless ``queues`` is
    given. Use it as a context manager (or call :meth:`start` and :meth:`stop`): it is
    ready to take tasks when the ``with`` block starts (no ping task: it waits for its
    consumer), and stops when the block ends, handing back what it has not acknowledged.

    ``pool`` is ``"threads"`` (``concurrency`` threads) or ``"solo"`` (tasks run on the
    worker's own thread, one at a time). Other keyword arguments go to Celery's
    ``WorkController`` (``prefetch_multiplier``, ...).
    """

    def __init__(
        self,
        app: Flask,
        *,
        pool: str = "threads",
        concurrency: int = 2,
        queues: Iterable[str] | None = None,
        ready_timeout: float = 30.0,
        shutdown_timeout: float = 15.0,
        **options: Any,
    ) -> None:
        super().__init__(app)
        if self.celery.conf.task_always_eager:
            raise RuntimeError(
                f"The Flask app {app.name!r} runs its tasks eagerly (task_always_eager is "
                "set), so a worker would never receive one. Drop CELERY_TASK_ALWAYS_EAGER "
                "(or task_always_eager) from the test configuration, or use eager mode "
                "(the tasks_eager fixture) instead of a worker."
            )
        self.queues = list(queues) if queues is not None else app_queues(self.celery)
        self.pool = pool
        self.concurrency = concurrency
        self.ready_timeout = ready_timeout
        self.shutdown_timeout = shutdown_timeout
        self.options = options
        self._worker: InProcessWorker | None = None

    @property
    def controller(self) -> Any:
        """Celery's ``WorkController`` (None before :meth:`start`)."""
        return self._worker.controller if self._worker is not None else None

    def start(self) -> TasksWorker:
        """Start the worker and wait until it consumes; returns the worker."""
        if self._worker is not None:
            raise RuntimeError("This worker was started already; create another one.")
        self._worker = _TestWorker(
            self.celery,
            pool=self.pool,
            concurrency=self.concurrency,
            name="test",
            queues=self.queues,
            **self.options,
        )
        self._worker.start(self.ready_timeout)
        return self

    def stop(self) -> None:
        """Stop the worker (waiting up to ``shutdown_timeout`` for running tasks)."""
        worker = self._worker
        if worker is not None and not worker.stop(self.shutdown_timeout):
            raise RuntimeError(  # pragma: no cover - a task that never ends
                f"The test worker did not stop within {self.shutdown_timeout:g}s: a task is "
                "still running."
            )

    def __enter__(self) -> TasksWorker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _check_running(self) -> None:
        worker = self._worker
        if worker is None:
            raise RuntimeError("The test worker is not started: call start() first.")
        if not worker.thread.is_alive():
            cause = f": {worker.error!r}" if worker.error is not None else ""
            raise RuntimeError(f"The test worker has stopped{cause}.")

    def _waiting_hint(self, record: TaskRecord) -> str:
        if record.state is TaskState.QUEUED and record.queue and record.queue not in self.queues:
            return (
                f" It waits in queue {record.queue!r}, which this worker does not consume "
                f"(it consumes {', '.join(map(repr, self.queues))}): add it to the worker's "
                "queues (the tasks_worker_options fixture, or queues=[...])."
            )
        return ""


@contextmanager
def start_worker(
    app: Flask,
    *,
    pool: str = "threads",
    concurrency: int = 2,
    queues: list[str] | None = None,
    ready_timeout: float = 30.0,
    shutdown_timeout: float = 15.0,
    **options: Any,
) -> Iterator[Any]:
    """Run a real Celery worker for ``app`` in a thread of this process.

    It consumes from the app's own broker (embedded, Redis, RabbitMQ, ``memory://``) and
    is ready to take tasks when the ``with`` block starts; it stops, handing back what it
    has not acknowledged, when the block ends. ``pool`` is ``"threads"`` or ``"solo"``.
    ``queues=None`` consumes Celery's default queues. Yields Celery's ``WorkController``;
    see :class:`TasksWorker` for a worker with waiting and assertion helpers.
    """
    worker = _TestWorker(
        app.extensions["tasks"].celery,
        pool=pool,
        concurrency=concurrency,
        name="test",
        queues=queues,
        **options,
    )
    worker.start(ready_timeout)
    try:
        yield worker.controller
    finally:
        if not worker.stop(shutdown_timeout):  # pragma: no cover - a task that never ends
            raise RuntimeError(f"The test worker did not stop within {shutdown_timeout}s.")


# -- eager mode ---------------------------------------------------------------------------

# The Celery settings eager mode changes while it is on.
_EAGER_SETTINGS: Final = {
    "task_always_eager": True,
    # Celery raises before it stores a failure when this is set: EagerTasks raises the
    # task's exception itself, once the failure is recorded.
    "task_eager_propagates": False,
    "task_store_eager_result": True,
}
# The Celery apps in eager mode now, and who switched it on.
_EAGER_APPS: weakref.WeakKeyDictionary[Any, EagerTasks] = weakref.WeakKeyDictionary()


class EagerTasks(TaskChecks):
    """Eager mode for ``app`` while it is on, with :class:`TaskChecks`.

    ``delay()`` and ``apply_async()`` run the task at once, in the caller's thread, and
    return a handle whose result is already there. Unlike plain ``task_always_eager``:

    * every task still gets its record (queued, running, then succeeded or failed), also
      when its exception propagates;
    * a task sent inside an app context of the app runs in that same context, so it sees
      the caller's ``g`` and Flask-SQLAlchemy session, uncommitted objects included;
    * with ``propagate`` (the default), a task's exception is raised by ``delay()``, after
      the failure was recorded. Set ``propagate = False`` (at any time) to get a failed
      handle instead.

    Use it as a context manager (or call :meth:`start` and :meth:`stop`); the app's
    Celery settings are put back as they were afterwards. (Propagation applies to the
    tasks the app has when eager mode starts; one declared later records its failure
    without raising it.)
    """

    def __init__(self, app: Flask, *, propagate: bool = True) -> None:
        super().__init__(app)
        self.propagate = propagate
        self._saved: dict[str, tuple[bool, Any]] | None = None
        self._patched: list[Any] = []

    def start(self) -> EagerTasks:
        """Switch the app to eager mode; returns this object."""
        if self._saved is not None:
            raise RuntimeError("Eager mode is on already.")
        conf = self.celery.conf
        if self.celery in _EAGER_APPS:
            raise RuntimeError(
                f"The Flask app {self.app.name!r} is in eager mode already (another "
                "EagerTasks, or the tasks_eager fixture, is on)."
            )
        changes = conf.changes
        self._saved = {key: (key in changes, changes.get(key)) for key in _EAGER_SETTINGS}
        conf.update(_EAGER_SETTINGS)
        _EAGER_APPS[self.celery] = self
        for task in list(self.celery.tasks.values()):
            if not task.name.startswith("celery.") and "apply_async" not in vars(task):
                task.apply_async = self._propagating(task.apply_async)
                self._patched.append(task)
        return self

    def stop(self) -> None:
        """Put the app's Celery settings and tasks back as they were."""
        saved, self._saved = self._saved, None
        if saved is None:
            return
        for task in self._patched:
            vars(task).pop("apply_async", None)
        self._patched.clear()
        _EAGER_APPS.pop(self.celery, None)
        conf = self.celery.conf
        for key, (was_set, value) in saved.items():
            if was_set:
                conf[key] = value
            else:
                conf.changes.pop(key, None)

    def _propagating(self, apply_async: Any) -> Any:
        """Wrap a task's ``apply_async``: the failure is recorded, then raised if asked.

        (Raised from within ``apply_async``, the exception would make flask-tasks treat
        the task as never sent, and remove its record.)
        """

        def eager_apply_async(*args: Any, **options: Any) -> Any:
            __tracebackhide__ = True
            throw = options.pop("throw", None)
            result = apply_async(*args, **options)
            if (self.propagate if throw is None else throw) and result.failed():
                error = result.result
                if isinstance(error, BaseException):
                    raise error
            return result

        return eager_apply_async

    def __enter__(self) -> EagerTasks:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- messages -----------------------------------------------------------------------------


def _task_id(task: Any) -> str:
    task_id = task if isinstance(task, str) else getattr(task, "id", None)
    if not isinstance(task_id, str) or not task_id:
        raise TypeError(f"Expected a task id or the handle delay() returned, not {task!r}.")
    return task_id


def _label(record: TaskRecord) -> str:
    return f"Task {record.name!r} [{record.id}]"


def _error_line(record: TaskRecord) -> str:
    error = record.error
    if error is None:
        return "no recorded error"
    return f"{error.type}: {error.message}" if error.message else error.type


def _traceback(record: TaskRecord) -> str:
    error = record.error
    if error is None or not error.traceback:
        return ""
    return "\n\n" + error.traceback.rstrip()


def _outcome(record: TaskRecord) -> str:
    """How a final record ended, for a message about a different expectation."""
    if record.state is TaskState.SUCCEEDED:
        return f"succeeded with result {record.result!r}"
    if record.state is TaskState.FAILED:
        return f"failed with {_error_line(record)}"
    if record.state is TaskState.CANCELLED:
        return "was cancelled"
    return f"is {_describe(record)}"  # pragma: no cover - callers wait for a final state


def _describe(record: TaskRecord) -> str:
    """The state of a record and what else tells where the task is."""
    details = []
    if record.attempt:
        details.append(f"attempt {record.attempt}")
    progress = record.progress
    if progress is not None:
        done = f"{progress.current:g}" + (f"/{progress.total:g}" if progress.total else "")
        details.append(f"progress {done}" + (f" {progress.message!r}" if progress.message else ""))
    if record.state is TaskState.RETRYING and record.error is not None:
        details.append(f"last error {_error_line(record)}")
    if record.cancel_requested:
        details.append("cancel requested")
    return f"{record.state.value!r}" + (f" ({', '.join(details)})" if details else "")


def _error_name(error_type: type[BaseException] | str | None) -> str | None:
    if error_type is None or isinstance(error_type, str):
        return error_type
    return error_type.__name__


def _same_json(recorded: Any, expected: Any) -> bool:
    if recorded == expected:
        return True
    try:
        return bool(recorded == json.loads(json.dumps(expected)))
    except (TypeError, ValueError):
        return False
