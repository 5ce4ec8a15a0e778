"""What the dashboard shows, computed from a record store: no Flask here.

The views turn a request's query string into :class:`Filters`, ask :func:`listing` for a
page of records and the counts per state, or :func:`retry_plan` for what a retry would
send, and hand the result to a template. The formatting helpers (:func:`when`,
:func:`duration`, :func:`pretty_json`, :func:`outcome`) are plain functions of a record.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from flask_tasks.state import TaskRecord, TaskState
from flask_tasks.store.base import RecordStore

DEFAULT_LIMIT = 25
LIMITS = (25, 50, 100)
MAX_NAME_LENGTH = 255
SHORT_TEXT = 120
STATE_LABELS = {
    TaskState.QUEUED: "Queued",
    TaskState.RUNNING: "Running",
    TaskState.RETRYING: "Retrying",
    TaskState.SUCCEEDED: "Succeeded",
    TaskState.FAILED: "Failed",
    TaskState.CANCELLED: "Cancelled",
}


class BadQuery(ValueError):
    """Raised when a dashboard query string holds a value the dashboard cannot use."""


@dataclass(frozen=True)
class Filters:
    """What the task list shows: a state, a task name, a page size and a page cursor."""

    state: TaskState | None = None
    name: str | None = None
    limit: int = DEFAULT_LIMIT
    cursor: str | None = None

    @classmethod
    def parse(cls, args: Mapping[str, str]) -> Filters:
        """Read filters from a query string; raises :class:`BadQuery` for a wrong value."""
        state = None
        state_name = (args.get("state") or "").strip()
        if state_name:
            try:
                state = TaskState(state_name)
            except ValueError:
                known = ", ".join(s.value for s in TaskState)
                raise BadQuery(f"Unknown state {state_name!r}; use one of: {known}.") from None
        name = (args.get("name") or "").strip() or None
        if name is not None and len(name) > MAX_NAME_LENGTH:
            raise BadQuery(f"A task name has at most {MAX_NAME_LENGTH} characters.")
        limit_text = (args.get("limit") or "").strip()
        limit = DEFAULT_LIMIT
        if limit_text:
            try:
                limit = int(limit_text)
            except ValueError:
                limit = 0
            if not 1 <= limit <= max(LIMITS):
                raise BadQuery(f"The page size must be a whole number from 1 to {max(LIMITS)}.")
        cursor = args.get("cursor") or None
        return cls(state=state, name=name, limit=limit, cursor=cursor)

    def query(self, **changes: Any) -> dict[str, str]:
        """The query string of these filters (with ``changes``), without default values."""
        filters = replace(self, **changes)
        query: dict[str, str] = {}
        if filters.state is not None:
            query["state"] = filters.state.value
        if filters.name:
            query["name"] = filters.name
        if filters.limit != DEFAULT_LIMIT:
            query["limit"] = str(filters.limit)
        if filters.cursor:
            query["cursor"] = filters.cursor
        return query

    @property
    def active(self) -> bool:
        """Whether a state or name filter is on."""
        return self.state is not None or self.name is not None


@dataclass(frozen=True)
class StateCount:
    """How many live records are in ``state`` (``None``: in every state)."""

    state: TaskState | None
    count: int

    @property
    def label(self) -> str:
        return "All" if self.state is None else STATE_LABELS[self.state]


@dataclass(frozen=True)
class Listing:
    """One page of the task list: records newest first, the next cursor, the counts."""

    filters: Filters
    records: list[TaskRecord]
    next_cursor: str | None
    counts: list[StateCount] = field(default_factory=list)


def state_counts(store: RecordStore) -> list[StateCount]:
    """Every state with its number of live records, after the total (``state=None``)."""
    counts = store.counts()
    per_state = [StateCount(state, int(counts.get(state, 0))) for state in TaskState]
    return [StateCount(None, sum(c.count for c in per_state)), *per_state]


def listing(store: RecordStore, filters: Filters) -> Listing:
    """A page of every user's records matching ``filters``, and the counts per state.

    Raises :class:`BadQuery` for a cursor the store does not accept, and the store's
    :class:`~flask_tasks.store.base.StoreError` when it cannot be read.
    """
    try:
        page = store.list(
            owner=None,
            state=filters.state,
            name=filters.name,
            limit=filters.limit,
            cursor=filters.cursor,
        )
    except ValueError:
        raise BadQuery(
            "This page link is no longer valid; start again from the first page."
        ) from None
    return Listing(
        filters=filters,
        records=page.records,
        next_cursor=page.next_cursor,
        counts=state_counts(store),
    )


def task_names(names: Iterable[str]) -> list[str]:
    """Task names worth offering in the name filter: Celery's own tasks left out."""
    return sorted({name for name in names if not name.startswith("celery.")})


# -- retry ---------------------------------------------------------------------------------


NO_META = (
    "Celery kept no arguments for this task (its result expired, or the result backend "
    "does not keep them), so it cannot be sent again from here."
)
NEVER_STARTED = (
    "This task was cancelled before it started, so Celery never stored its arguments; "
    "it cannot be sent again from here."
)
NOT_EXTENDED = (
    "Celery did not keep this task's arguments (the app sets result_extended = False), "
    "so it cannot be sent again from here."
)
NOT_FINISHED = "Only a finished task can be sent again."


@dataclass(frozen=True)
class RetryPlan:
    """What retrying a task would send: its name and arguments, or why it cannot."""

    name: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    reason: str | None = None
    """Why the task cannot be retried; None when it can."""

    @property
    def available(self) -> bool:
        return self.reason is None


def retry_plan(store: RecordStore, record: TaskRecord) -> RetryPlan:
    """What a retry of ``record`` would send, read from Celery's result meta.

    With ``result_extended`` (flask-tasks' default) the meta of a task that stored a result
    (it succeeded, failed, or was cancelled while running) holds its ``name``, ``args``
    and ``kwargs``. A task cancelled while queued never ran, so its meta has none.
    """
    if not record.finished:
        return RetryPlan(record.name, reason=NOT_FINISHED)
    stored = store.get_meta(record.id)
    meta: Any = None
    if stored is not None:
        try:
            meta = json.loads(stored[1])
        except ValueError:
            meta = None
    if not isinstance(meta, dict):
        return RetryPlan(record.name, reason=NO_META)
    args, kwargs = meta.get("args"), meta.get("kwargs")
    if args is None and kwargs is None:
        if record.state is TaskState.CANCELLED and record.started_at is None:
            return RetryPlan(record.name, reason=NEVER_STARTED)
        return RetryPlan(record.name, reason=NOT_EXTENDED)
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        return RetryPlan(record.name, reason=NO_META)
    name = meta.get("name")
    return RetryPlan(name if isinstance(name, str) and name else record.name, args, kwargs)


# -- formatting ----------------------------------------------------------------------------


def when(value: datetime.datetime | None) -> str:
    """A timestamp for people, in UTC: ``2026-11-21 13:38:59``; empty when unknown."""
    if value is None:
        return ""
    return value.astimezone(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def iso(value: datetime.datetime | None) -> str:
    """A timestamp for machines (``<time datetime>``); empty when unknown."""
    return value.isoformat() if value is not None else ""


def duration(start: datetime.datetime | None, end: datetime.datetime | None) -> str:
    """The time from ``start`` to ``end``: ``0.42 s``, ``12.3 s``, ``4 min 5 s``, ``2 h 3 min``."""
    if start is None or end is None:
        return ""
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def pretty_json(value: Any) -> str:
    """A JSON value, indented for reading (anything else shown with ``repr``)."""
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False, default=repr)


def shorten(text: str, limit: int = SHORT_TEXT) -> str:
    """``text`` on one line, cut to ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def outcome(record: TaskRecord) -> str:
    """A one-line summary of how a finished task ended (empty while it has not)."""
    if record.state is TaskState.SUCCEEDED:
        if record.result is None:
            return "No result"
        if isinstance(record.result, str):
            return shorten(record.result)
        return shorten(json.dumps(record.result, ensure_ascii=False, default=repr))
    if record.error is not None and record.state in (TaskState.FAILED, TaskState.CANCELLED):
        if record.state is TaskState.CANCELLED:
            return shorten(record.error.message or "Cancelled")
        message = f"{record.error.type}: {record.error.message}" if record.error.message else ""
        return shorten(message or record.error.type)
    if record.state is TaskState.CANCELLED:
        return "Cancelled"
    return ""


def number(value: float | None) -> str:
    """A number for people: ``3``, ``2.5``, ``33.33``; empty when unknown."""
    if value is None:
        return ""
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


def eta(seconds: float | None) -> str:
    """A rough time left: ``about 12 s``, ``about 3 min``; empty when unknown."""
    if seconds is None or seconds < 0:
        return ""
    if seconds < 1.5:
        return "almost done"
    if seconds < 90:
        return f"about {round(seconds)} s"
    if seconds < 5400:
        return f"about {round(seconds / 60)} min"
    return f"about {round(seconds / 3600)} h"


def progress_text(record: TaskRecord) -> str:
    """The progress of a task as text (for pages read without JavaScript)."""
    progress = record.progress
    if progress is None:
        return ""
    parts = []
    if progress.percent is not None:
        parts.append(f"{number(progress.percent)}%")
    elif progress.total is not None:
        parts.append(f"{number(progress.current)} of {number(progress.total)}")
    else:
        parts.append(number(progress.current))
    if progress.message:
        parts.append(progress.message)
    return " · ".join(parts)
