"""Sending a finished task again (the dashboard's Retry): Celery, no Flask here."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from celery.utils import uuid
from kombu.exceptions import OperationalError

from flask_tasks.exceptions import BrokerUnavailable
from flask_tasks.state import TaskRecord, TaskState, utcnow
from flask_tasks.store.base import StoreError
from flask_tasks.task import H_OWNER, OWNER_OPTION, FlaskTask

from .data import RetryPlan

if TYPE_CHECKING:
    from flask_tasks.extension import FlaskCelery


def resend(celery_app: FlaskCelery, plan: RetryPlan, owner: str | None) -> str:
    """Send ``plan``'s task again, as a new task owned by ``owner``; return its id.

    A task registered in this app goes through it, so its argument checks, records and
    routing apply as for any call. A task only the workers know is sent by name with
    Celery's ``send_task`` (routed by ``task_routes`` or to the default queue), after
    writing its ``queued`` record here. Options of the original call (``queue``,
    ``countdown``, ``priority``...) are not kept: Celery does not store them.

    Raises ``TypeError``/``ValueError`` for arguments the task refuses now, and
    :class:`~flask_tasks.BrokerUnavailable` when the message cannot be sent.
    """
    if not plan.available:
        raise ValueError(plan.reason)
    task = celery_app.tasks.get(plan.name)
    if isinstance(task, FlaskTask):
        result = task.apply_async(plan.args, plan.kwargs, **{OWNER_OPTION: owner})
        return str(result.id)
    return _send_by_name(celery_app, plan, owner)


def _send_by_name(celery_app: FlaskCelery, plan: RetryPlan, owner: str | None) -> str:
    task_id: str = uuid()
    store = celery_app.tasks_store
    now = utcnow()
    record = TaskRecord(
        id=task_id,
        name=plan.name,
        state=TaskState.QUEUED,
        submitted_at=now,
        updated_at=now,
        owner=owner,
        queue=celery_app.conf.task_default_queue,
    )
    store.create(record)
    try:
        celery_app.send_task(
            plan.name,
            args=plan.args,
            kwargs=plan.kwargs,
            task_id=task_id,
            headers={H_OWNER: owner} if owner is not None else {},
        )
    except OperationalError as exc:
        _forget(celery_app, task_id)
        raise BrokerUnavailable(
            f"Could not send task {plan.name!r}: the broker is not reachable: {exc}. "
            "Nothing was sent."
        ) from exc
    except BaseException:
        _forget(celery_app, task_id)
        raise
    return task_id


def _forget(celery_app: FlaskCelery, task_id: str) -> None:
    with contextlib.suppress(StoreError):
        celery_app.tasks_store.delete(task_id)  # it would show as queued until it expires
