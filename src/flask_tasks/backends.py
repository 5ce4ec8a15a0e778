"""Celery result backends that keep flask-tasks' task records.

The record store *is* the result backend: Celery writes a task's state and result through
it (``AsyncResult(id).get()``, groups and chords keep working), and the same write
updates the record the API, the CLI and the dashboard read. Nothing is stored twice.

Selected by URL, ``tasks-redis+redis://...`` or ``tasks-sql+<SQLAlchemy URL>``;
``init_app`` sets this up from the configuration.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from typing import Any

from celery import states
from celery.app import backends as celery_backends
from celery.backends.base import BaseBackend
from celery.backends.redis import RedisBackend
from celery.result import result_from_tuple

from ._heartbeat import heartbeats
from .progress import take_final_progress
from .store import create_store
from .store.base import RecordStore, StoreError

logger = logging.getLogger("flask_tasks")


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


REDIS_ALIAS = "tasks-redis"
SQL_ALIAS = "tasks-sql"

_stores: dict[tuple[str, str], RecordStore] = {}
_stores_lock = threading.Lock()


def register() -> None:
    """Make the ``tasks-redis+`` and ``tasks-sql+`` result backend URLs known to Celery."""
    celery_backends.BACKEND_ALIASES[REDIS_ALIAS] = f"{__name__}:RedisRecordBackend"
    celery_backends.BACKEND_ALIASES[SQL_ALIAS] = f"{__name__}:SQLRecordBackend"


register()


class RecordBackendMixin:
    """What both record backends share: writes go through the store, atomically guarded."""

    app: Any
    url: str | None

    @property
    def store(self) -> RecordStore:
        store: RecordStore | None = getattr(self.app, "tasks_store", None)
        if store is not None:
            return store
        # A plain Celery app configured with our URL: one store per URL and process.
        url = self.url or ""
        key = (url, type(self).__name__)
        with _stores_lock:
            if key not in _stores:
                _stores[key] = create_store(url)
            return _stores[key]

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: str | None = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        meta = self._get_result_meta(  # type: ignore[attr-defined]
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = _text(task_id)
        encoded = _text(self.encode(meta))  # type: ignore[attr-defined]
        retries = getattr(request, "retries", None)
        store = self.store
        write = partial(
            store.save,
            task_id,
            celery_state=state,
            meta=encoded,
            name=getattr(request, "task", None),
            attempt=retries + 1 if isinstance(retries, int) else None,
            progress=take_final_progress(task_id),
        )
        try:
            write()
        except StoreError:
            # The task's own outcome stands; only its record could not be written.
            logger.exception("flask-tasks: could not record state %s of task %s", state, task_id)
            if state in states.READY_STATES:
                # The end of a task is written once the store answers again.
                settings = getattr(self.app, "tasks_settings", None)
                timeout = settings.worker_lost_timeout if settings is not None else 60.0
                heartbeats.retry_later(store, _text(task_id), write, timeout=timeout)
        return result

    def _forget(self, task_id: str) -> None:
        self.store.delete(task_id)


class RedisRecordBackend(RecordBackendMixin, RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend, writing task records in the same round trip.

    Task meta stays at Celery's own key, so Celery's pub/sub ``get()``, ``get_many`` and
    chords work as before. Two round trips fewer than Celery per task: no subscription on
    every ``delay()`` (``get()`` subscribes when it is called), and no read before each
    write (the store's script refuses to overwrite a final state).
    """

    @property
    def client(self) -> Any:
        return self.store.client  # type: ignore[attr-defined]

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Celery subscribes to the result here; ``get()`` does it when needed instead."""


class SQLRecordBackend(RecordBackendMixin, BaseBackend):  # type: ignore[misc]
    """A result backend on an SQL database (SQLite, PostgreSQL, MariaDB/MySQL)."""

    supports_native_join = False

    def __init__(self, app: Any = None, url: str | None = None, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.url = url

    def _get_task_meta_for(self, task_id: str) -> dict[str, Any]:
        found = self.store.get_meta(task_id)
        if found is None:
            return {"status": "PENDING", "result": None}
        meta: dict[str, Any] = self.decode_result(found[1])
        return meta

    def _save_group(self, group_id: str, result: Any) -> Any:
        self.store.save_group(  # type: ignore[attr-defined]
            group_id, _text(self.encode({"result": result.as_tuple()}))
        )
        return result

    def _restore_group(self, group_id: str) -> dict[str, Any] | None:
        encoded = self.store.get_group(group_id)  # type: ignore[attr-defined]
        if encoded is None:
            return None
        meta: dict[str, Any] = self.decode(encoded)
        meta["result"] = result_from_tuple(meta["result"], self.app)
        return meta

    def _delete_group(self, group_id: str) -> None:
        self.store.delete_group(group_id)  # type: ignore[attr-defined]

    def cleanup(self) -> None:
        self.store.prune()
