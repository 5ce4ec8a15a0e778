"""What a record store does: the contract the Redis and SQL stores implement.

A store keeps one :class:`~flask_tasks.state.TaskRecord` per task, from the moment it is
sent until it ends and expires, indexed by time, owner and state. It also keeps Celery's
own result ``meta`` for the task (opaque JSON text written by the result backend), so the
store *is* Celery's result backend and nothing is stored twice: a record's ``result`` and
``error`` are read out of that meta.

Rules every store follows:

* **Final is final.** Once a record is ``succeeded``, ``failed`` or ``cancelled``, no
  write changes its state, progress, meta or timestamps (a late progress write, a retry
  from a duplicate delivery, a worker's ``running`` write are ignored).
* **The cancel flag lives apart from progress**: no progress or state write clears it.
* **One round trip** per write (``create``, ``mark_running``, ``save``,
  ``write_progress``, ``request_cancel``) and per read of one record.
* **Unknown is unknown**: ``get`` returns ``None`` for an id it never saw or that
  expired.
* Errors reaching the backing service raise :class:`StoreError`.
* No Flask import; times are timezone-aware UTC ``datetime`` objects.
"""

from __future__ import annotations

import contextlib
import datetime
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from flask_tasks.exceptions import TasksError
from flask_tasks.state import Progress, TaskError, TaskRecord, TaskState, state_from_celery

DEFAULT_RETENTION = datetime.timedelta(days=7)
DEFAULT_PREFIX = "flask_tasks"


class StoreError(TasksError):
    """Raised when the record store cannot be reached or fails a read or write."""


class CancelOutcome(str, Enum):
    """What :meth:`RecordStore.request_cancel` did."""

    NOT_FOUND = "not_found"
    """No such record (or it expired)."""
    FINISHED = "finished"
    """The task had already ended; nothing changed."""
    CANCELLED = "cancelled"
    """The task was still queued: the record is now ``cancelled`` and it will never start."""
    REQUESTED = "requested"
    """The task is running (or retrying): the flag is set, its next ``progress()`` raises."""


class StartDecision(str, Enum):
    """What :meth:`RecordStore.mark_running` decided."""

    RUN = "run"
    """The record is ``running`` now; run the task."""
    SKIP = "skip"
    """The record is final (cancelled while queued, or already done): do not run it."""


@dataclass(frozen=True)
class Page:
    """One page of records, newest first, and the cursor of the next page (or None)."""

    records: list[TaskRecord]
    next_cursor: str | None


class RecordStore(ABC):
    """Keeps task records. Thread-safe; one instance serves a whole process."""

    retention: datetime.timedelta

    # -- the sender ------------------------------------------------------------------------

    @abstractmethod
    def create(self, record: TaskRecord) -> None:
        """Write ``record`` (state ``queued``), unless a record with its id exists.

        Indexes it by time, by owner (when it has one) and by state, and makes it expire
        ``retention`` after its last state change.
        """

    def create_pipelined(self, record: TaskRecord) -> Callable[..., None]:
        """Start :meth:`create` and return a function that waits for it to be done.

        The sender publishes the task message between the two, so a store that can send
        a command without waiting for its reply (Redis) overlaps the two round trips. The
        returned function, ``finish(timeout=None)``, raises :class:`StoreError` if the
        write failed, or if ``timeout`` seconds pass without an answer. The default writes
        at once.
        """
        self.create(record)
        return _done

    @abstractmethod
    def delete(self, task_id: str) -> None:
        """Remove a record and its indexes entries (a publish that failed, ``forget``)."""

    # -- the worker ------------------------------------------------------------------------

    @abstractmethod
    def mark_running(
        self,
        task_id: str,
        *,
        name: str,
        attempt: int,
        started_at: datetime.datetime,
        queue: str | None = None,
        owner: str | None = None,
    ) -> StartDecision:
        """Move a record to ``running`` (creating it if the task was sent without one).

        Sets ``started_at`` on the first attempt only and ``attempt`` always. Returns
        ``SKIP`` without changing anything when the record is final.
        """

    @abstractmethod
    def save(
        self,
        task_id: str,
        *,
        celery_state: str,
        meta: str,
        name: str | None = None,
        attempt: int | None = None,
        progress: Progress | None = None,
    ) -> bool:
        """Store Celery's result ``meta`` (JSON text) for ``celery_state`` and update the record.

        The record's state becomes ``state_from_celery(celery_state)``; a final state sets
        ``finished_at`` and restarts the expiry clock. ``progress``, when given, is stored
        in the same write (the last value of a task that just ended). Creates the record
        when there is none. Returns False (and changes nothing) when the record is final.
        """

    @abstractmethod
    def write_progress(self, task_id: str, progress: Progress) -> bool:
        """Store the progress of a running task; return its cancel flag.

        Ignored (returns the flag all the same) when the record is final or missing.
        """

    @abstractmethod
    def touch_running(self, task_ids: Collection[str]) -> None:
        """Refresh ``updated_at`` of those of ``task_ids`` whose record is ``running``.

        The heartbeat of the process running them (see :mod:`flask_tasks._heartbeat`):
        a running record whose ``updated_at`` stops moving belongs to a lost worker. No
        other field changes, no event is published, final records are left alone.
        """

    # -- anyone ----------------------------------------------------------------------------

    @abstractmethod
    def request_cancel(self, task_id: str) -> CancelOutcome:
        """Ask a task to stop: a queued task becomes ``cancelled`` at once, a running
        one gets its cancel flag set."""

    @abstractmethod
    def cancel_requested(self, task_id: str) -> bool:
        """The cancel flag of a record (False when there is none)."""

    @abstractmethod
    def get(self, task_id: str) -> TaskRecord | None:
        """The whole record, or None when the id is unknown or expired."""

    @abstractmethod
    def get_meta(self, task_id: str) -> tuple[str, str] | None:
        """Celery's ``(state, meta JSON text)`` of a task, or None (for the result backend)."""

    @abstractmethod
    def list(
        self,
        *,
        owner: str | None = None,
        state: TaskState | None = None,
        name: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> Page:
        """Records newest first (by ``submitted_at``), one page at a time.

        ``owner=None`` lists every record (dashboard, CLI); a page costs O(limit) when
        filtering by owner and/or state, whatever the number of records.
        """

    @abstractmethod
    def counts(self, *, owner: str | None = None) -> dict[TaskState, int]:
        """How many live records there are in each state."""

    @abstractmethod
    def purge(self, *, finished_before: datetime.datetime | None = None) -> int:
        """Delete finished records (that finished before the given time); return how many."""

    @abstractmethod
    def prune(self) -> int:
        """Delete what outlived ``retention``; return how many records went."""

    @abstractmethod
    def drop(self) -> None:
        """Delete every record, index and table of this store (tests, ``purge --all``)."""

    def close(self) -> None:  # noqa: B027 - a no-op default
        """Release connections (tests, shutdown)."""


def _done(timeout: float | None = None) -> None:
    return None


# -- reading Celery's meta ----------------------------------------------------------------


def _exception_message(result: Mapping[str, Any]) -> str:
    message = result.get("exc_message")
    if isinstance(message, (list, tuple)):
        return " ".join(str(part) for part in message) if message else ""
    return "" if message is None else str(message)


def _error_type_and_message(result: Mapping[str, Any]) -> tuple[str, str]:
    kind = str(result.get("exc_type"))
    parts = result.get("exc_message")
    if kind == "UnpickleableExceptionWrapper" and isinstance(parts, list) and len(parts) == 4:
        # Celery's stand-in for an exception it could not serialize: [module, class
        # name, args, repr]. The task raised the class, so that is the error's type.
        return str(parts[1]), str(parts[3])
    return kind, _exception_message(result)


def fields_from_meta(celery_state: str, meta_json: str | None) -> dict[str, Any]:
    """The record fields that Celery's result meta holds: ``result``, ``error``, ``meta``,
    and ``progress`` for a custom state whose meta has ``current``/``total`` (the
    ``update_state(state="PROGRESS", meta={"current": i, "total": n})`` idiom)."""
    fields: dict[str, Any] = {"result": None, "error": None, "meta": None}
    if not meta_json:
        return fields
    try:
        meta = json.loads(meta_json)
    except ValueError:
        return fields
    if not isinstance(meta, dict):
        return fields
    value = meta.get("result")
    state = state_from_celery(celery_state)
    if celery_state == "SUCCESS":
        fields["result"] = value
    elif state is TaskState.FAILED or celery_state == "RETRY":
        if isinstance(value, dict) and "exc_type" in value:
            error_type, message = _error_type_and_message(value)
            fields["error"] = TaskError(
                type=error_type, message=message, traceback=meta.get("traceback")
            )
        elif value is not None:
            fields["error"] = TaskError(type="Error", message=str(value))
    elif celery_state == "REVOKED" and isinstance(value, dict) and "exc_type" in value:
        fields["error"] = TaskError(type=str(value["exc_type"]), message=_exception_message(value))
    elif state is TaskState.RUNNING and celery_state != "STARTED":
        fields["meta"] = value
        if isinstance(value, dict):
            current, total = value.get("current"), value.get("total")
            if isinstance(current, (int, float)) and not isinstance(current, bool):
                with contextlib.suppress(TypeError):
                    fields["progress"] = Progress.make(
                        current,
                        total if isinstance(total, (int, float)) else None,
                        value.get("message") if isinstance(value.get("message"), str) else None,
                    )
    return fields
