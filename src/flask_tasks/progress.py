"""Progress and cooperative cancellation, from inside a running task.

``progress(current, total, message)`` works in any task (no ``bind=True``): the worker
sets the running task in a ContextVar. Calls are throttled to one store write per
``TASKS_PROGRESS_INTERVAL`` (0.2 s), so a tight loop can call it a million times; the
latest value is always written when the task ends. Each written update also reads the
task's cancel flag, in the same round trip, and raises :class:`TaskCancelled` when set.
"""

from __future__ import annotations

import contextlib
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from .exceptions import TaskCancelled
from .state import Progress

if TYPE_CHECKING:
    from .store.base import RecordStore

logger = logging.getLogger("flask_tasks")


@dataclass(eq=False)
class TaskContext:
    """The task running in this context (``flask_tasks.current_task``).

    ``id``, ``name``, ``attempt`` (1 for the first run), and what travelled from the
    request that sent it: ``owner``, ``request_id`` (the request's ``X-Request-ID``, or
    one made up for it), ``url_root`` and ``locale`` (with Flask-Babel).
    """

    id: str
    name: str
    attempt: int
    store: RecordStore | None = field(repr=False)
    interval: float = field(repr=False)
    owner: str | None = None
    request_id: str | None = None
    url_root: str | None = None
    locale: str | None = None
    started: float = field(default_factory=time.monotonic, repr=False)
    current: float = 0
    total: float | None = None
    message: str | None = None
    dirty: bool = False
    next_write: float = 0.0
    cancelled: bool = False
    next_cancel_check: float = 0.0
    store_failed: bool = False

    def snapshot(self, now: float) -> Progress:
        return Progress.make(self.current, self.total, self.message, elapsed=now - self.started)

    def write(self, now: float) -> None:
        """Write the latest progress now; raise TaskCancelled if cancellation was asked."""
        value = self.snapshot(now)  # raises TypeError for a bad value, at the caller
        self.dirty = False
        self.next_write = now + self.interval
        if self.store is None:
            return
        try:
            cancelled = self.store.write_progress(self.id, value)
        except Exception:  # a store error never fails the task
            if not self.store_failed:
                logger.exception("flask-tasks: could not record progress of task %s", self.id)
                self.store_failed = True
            return
        self.next_cancel_check = now + self.interval
        if cancelled:
            self.cancelled = True
            raise TaskCancelled(f"task {self.id} was cancelled")


_current: ContextVar[TaskContext | None] = ContextVar("flask_tasks_task", default=None)
_final: dict[str, Progress] = {}


def current_context() -> TaskContext | None:
    """The running task's context, or None outside a task."""
    return _current.get()


class _CurrentTask:
    """The proxy behind ``flask_tasks.current_task``."""

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:
        ctx = _current.get()
        if ctx is None:
            raise RuntimeError(
                "Working outside of a task: 'current_task' is only set while a task runs "
                "(in a worker, or eagerly)."
            )
        return getattr(ctx, name)

    def __bool__(self) -> bool:
        return _current.get() is not None

    def __repr__(self) -> str:
        return f"<current_task {_current.get()!r}>"


current_task: TaskContext = cast(TaskContext, _CurrentTask())
"""The task running now: ``current_task.id``, ``.owner``, ``.request_id``, ``.attempt``.

False outside a task (``if current_task: ...``); any attribute raises RuntimeError there.
"""


class ProgressReporter:
    """``progress(current, total=None, message=None)``: report how far the task is.

    ``total`` and ``message`` keep their last value when not given. Outside a task it
    does nothing, so a function can report progress whether or not it runs as a task.
    ``progress.step(n=1)`` adds ``n`` to the current value.
    """

    def __call__(
        self, current: float, total: float | None = None, message: str | None = None
    ) -> None:
        ctx = _current.get()
        if ctx is None:
            return
        ctx.current = current
        if total is not None:
            ctx.total = total
        if message is not None:
            ctx.message = message
        now = time.monotonic()
        if now < ctx.next_write:
            ctx.dirty = True
            return
        ctx.write(now)

    def step(self, n: float = 1, message: str | None = None) -> None:
        """Add ``n`` to the current value (and set the message)."""
        ctx = _current.get()
        if ctx is None:
            return
        self(ctx.current + n, None, message)


progress = ProgressReporter()


def is_cancelled() -> bool:
    """True once cancellation of the running task was requested.

    For tasks that do not report progress: check it between steps, clean up and raise
    :class:`TaskCancelled` (or return). Reads the flag at most once per progress interval.
    """
    ctx = _current.get()
    if ctx is None:
        return False
    if ctx.cancelled or ctx.store is None:
        return ctx.cancelled
    now = time.monotonic()
    if now >= ctx.next_cancel_check:
        ctx.next_cancel_check = now + ctx.interval
        try:
            ctx.cancelled = ctx.store.cancel_requested(ctx.id)
        except Exception:
            logger.exception("flask-tasks: could not read the cancel flag of task %s", ctx.id)
    return ctx.cancelled


def stash_final_progress(ctx: TaskContext) -> None:
    """Keep a throttled, unwritten value for the write that ends the task."""
    if ctx.dirty:
        with contextlib.suppress(TypeError):
            _final[ctx.id] = ctx.snapshot(time.monotonic())
        ctx.dirty = False


def take_final_progress(task_id: str) -> Progress | None:
    """The unwritten last progress of a task that just ended (for its final write)."""
    return _final.pop(task_id, None)
