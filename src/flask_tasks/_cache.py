"""A small per-process cache of records, for status polling."""

from __future__ import annotations

import datetime
import threading
import time
from collections import OrderedDict
from typing import Any

from .state import TaskRecord


class RecordCache:
    """Recently read records, kept briefly, so many clients polling costs few store reads.

    A queued or running task's record is kept ``running_ttl`` seconds at most (its progress
    is only written every progress interval anyway), and never longer than half the time
    since it was sent or started: a task that has just started may end within
    milliseconds, and a client polling it then should see the end at once, while a long
    task's pollers share one read per interval. A finished record never changes, so it is
    kept ``finished_ttl`` seconds (only a purge in another process can make it stale, for
    that long). Unknown ids are not cached. Thread-safe, bounded to ``maxsize`` entries.
    """

    def __init__(self, running_ttl: float, finished_ttl: float, maxsize: int = 4096) -> None:
        self.running_ttl = running_ttl
        self.finished_ttl = finished_ttl
        self.maxsize = maxsize
        self._entries: OrderedDict[str, tuple[float, TaskRecord, dict[Any, bytes]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, task_id: str) -> TaskRecord | None:
        entry = self._entries.get(task_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            with self._lock:
                self._entries.pop(task_id, None)
            return None
        return entry[1]

    def put(self, record: TaskRecord) -> None:
        if record.finished:
            ttl = self.finished_ttl
        else:
            since = record.started_at or record.submitted_at
            age = (datetime.datetime.now(datetime.timezone.utc) - since).total_seconds()
            ttl = min(self.running_ttl, age / 2)  # a clock ahead of ours: not cached
        if ttl <= 0:
            return
        with self._lock:
            self._entries[record.id] = (time.monotonic() + ttl, record, {})
            self._entries.move_to_end(record.id)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def body(self, task_id: str, variant: Any) -> bytes | None:
        """A response body already rendered for this record (``variant``: how it was)."""
        entry = self._entries.get(task_id)
        return None if entry is None else entry[2].get(variant)

    def keep_body(self, record: TaskRecord, variant: Any, body: bytes) -> None:
        """Remember how a cached record rendered, for the next poll."""
        entry = self._entries.get(record.id)
        if entry is not None and entry[1] is record:
            entry[2][variant] = body

    def forget(self, task_id: str) -> None:
        with self._lock:
            self._entries.pop(task_id, None)
