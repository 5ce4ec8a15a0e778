"""Task states, progress and records: plain data, shared by every layer.

No Flask, no Celery, no store: the Python API, the JSON API, the CLI and the browser all
see these shapes.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any


class TaskState(str, Enum):
    """Where a task is in its life. The last three are final: nothing moves them back."""

    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED

    def __str__(self) -> str:
        return self.value


FINISHED = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})

# Celery's state names -> ours. Any other (custom) state is a running task's.
_FROM_CELERY = {
    "PENDING": TaskState.QUEUED,
    "RECEIVED": TaskState.QUEUED,
    "STARTED": TaskState.RUNNING,
    "RETRY": TaskState.RETRYING,
    "SUCCESS": TaskState.SUCCEEDED,
    "FAILURE": TaskState.FAILED,
    "REVOKED": TaskState.CANCELLED,
    "REJECTED": TaskState.FAILED,
    "IGNORED": TaskState.SUCCEEDED,
}


def state_from_celery(status: str) -> TaskState:
    """Map a Celery state (``SUCCESS``, ``PROGRESS``, ...) onto a :class:`TaskState`.

    Custom states set with ``update_state`` (``PROGRESS``, ``DEPLOYING``) are ``running``;
    ``IGNORED`` (the task raised ``Ignore``) counts as ``succeeded``.
    """
    return _FROM_CELERY.get(status, TaskState.RUNNING)


def utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TypeError(f"progress {name} must be a finite number, not {value!r}")
    return float(value)


@dataclass(frozen=True)
class Progress:
    """How far a task is: the one progress schema, everywhere.

    ``percent`` is ``current / total * 100`` (``None`` without a total), capped to
    0..100; ``eta_seconds`` is estimated from the rate so far (``None`` until it can be).
    """

    current: float
    total: float | None = None
    message: str | None = None
    percent: float | None = None
    eta_seconds: float | None = None

    @classmethod
    def make(
        cls,
        current: float,
        total: float | None = None,
        message: str | None = None,
        *,
        elapsed: float | None = None,
    ) -> Progress:
        """Build a progress value, computing ``percent`` and, given ``elapsed``, the ETA."""
        current = _number("current", current)
        if total is not None:
            total = _number("total", total)
        if message is not None and not isinstance(message, str):
            message = str(message)
        percent = eta = None
        if total is not None and total > 0:
            percent = round(min(max(current / total * 100.0, 0.0), 100.0), 2)
            if elapsed is not None and elapsed > 0 and 0 < current < total:
                eta = round(elapsed / current * (total - current), 1)
            elif current >= total:
                eta = 0.0
        return cls(current=current, total=total, message=message, percent=percent, eta_seconds=eta)

    def to_dict(self) -> dict[str, Any]:
        return {
            "current": _plain(self.current),
            "total": _plain(self.total),
            "percent": self.percent,
            "message": self.message,
            "eta_seconds": self.eta_seconds,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Progress:
        return cls(
            current=data.get("current") or 0,
            total=data.get("total"),
            message=data.get("message"),
            percent=data.get("percent"),
            eta_seconds=data.get("eta_seconds"),
        )


def _plain(value: float | None) -> float | int | None:
    """Whole numbers as ints in JSON: ``3`` rather than ``3.0``."""
    if value is not None and float(value).is_integer():
        return int(value)
    return value


@dataclass(frozen=True)
class TaskError:
    """Why a task failed: the exception's type and message (and traceback, kept apart)."""

    type: str
    message: str
    traceback: str | None = None

    def to_dict(self, *, traceback: bool = False) -> dict[str, Any]:
        data: dict[str, Any] = {"type": self.type, "message": self.message}
        if traceback:
            data["traceback"] = self.traceback
        return data


@dataclass(frozen=True)
class TaskRecord:
    """Everything known about one task, from the moment it is sent until it ends."""

    id: str
    name: str
    state: TaskState
    submitted_at: datetime.datetime
    updated_at: datetime.datetime
    owner: str | None = None
    queue: str | None = None
    attempt: int = 0
    progress: Progress | None = None
    result: Any = None
    error: TaskError | None = None
    started_at: datetime.datetime | None = None
    finished_at: datetime.datetime | None = None
    cancel_requested: bool = False
    celery_state: str | None = None
    """Celery's own state name, e.g. a custom ``update_state`` state."""
    meta: dict[str, Any] | None = field(default=None)
    """The ``meta`` of a custom ``update_state`` state, kept as the task gave it."""

    @property
    def finished(self) -> bool:
        return self.state.finished

    def evolve(self, **changes: Any) -> TaskRecord:
        return replace(self, **changes)

    def to_dict(self, *, traceback: bool = False) -> dict[str, Any]:
        """The JSON shape of a record (what ``GET /tasks/<id>`` returns, without links)."""
        return {
            "id": self.id,
            "name": self.name,
            "state": self.state.value,
            "progress": self.progress.to_dict() if self.progress is not None else None,
            "result": self.result,
            "error": self.error.to_dict(traceback=traceback) if self.error else None,
            "owner": self.owner,
            "queue": self.queue,
            "attempt": self.attempt,
            "submitted_at": _iso(self.submitted_at),
            "started_at": _iso(self.started_at),
            "finished_at": _iso(self.finished_at),
            "updated_at": _iso(self.updated_at),
            "cancel_requested": self.cancel_requested,
            "meta": self.meta,
        }


def _iso(value: datetime.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
