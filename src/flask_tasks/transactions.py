"""Enqueue after commit: send a task once the database transaction that made its data commits.

A task sent in the middle of a transaction can run before that transaction commits, and
then reads rows that do not exist yet (or old values). :func:`apply_on_commit` holds the
message back until the **outermost** transaction of an SQLAlchemy session commits, and
drops it if the transaction, or the savepoint it was registered in, rolls back.

How it follows the session, with SQLAlchemy's ORM session events:

* Each waiting task is attached to the session's innermost *savepoint* transaction
  (``session.begin_nested()``), or to its root transaction when there is none. The lists
  live in ``session.info``, so they belong to one :class:`~sqlalchemy.orm.Session`: a
  scoped session (Flask-SQLAlchemy's ``db.session``) has one per app context or thread,
  and nothing is shared between requests or threads.
* ``after_commit`` fires when the root transaction commits or a savepoint is released;
  the transaction committing then is the innermost one, and it is marked as committed.
* ``after_transaction_end`` fires when any transaction ends: committed, rolled back, or
  closed because an enclosing one rolled back or the session closed (those get no
  rollback event of their own). A savepoint that ended committed hands its tasks to the
  enclosing transaction; a root transaction that ended committed sends them; anything
  that ended without commit drops them.

The task id is chosen at call time, so the caller can return it before the commit; the
record (state ``queued``) is written when the message is really sent, by the normal
``apply_async`` path.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from celery.utils import uuid
from flask import current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

from ._arguments import check_arguments
from .exceptions import BrokerUnavailable
from .task import H_OWNER, OWNER_OPTION

if TYPE_CHECKING:
    from .config import Settings
    from .task import FlaskTask, TaskResult

logger = logging.getLogger("flask_tasks")

_INFO_KEY = "flask_tasks.on_commit"


@dataclass
class _PendingTask:
    """A task waiting for a commit: everything ``apply_async`` will be called with."""

    celery_task: FlaskTask
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    task_id: str
    options: dict[str, Any]

    def send(self) -> Any:
        """Publish now, through the task's own ``apply_async``."""
        return self.celery_task.apply_async(
            self.args, self.kwargs, task_id=self.task_id, **self.options
        )

    def send_after_commit(self) -> None:
        """Publish from a session event: the commit is done, so log a failure, never raise."""
        try:
            self.send()
        except BrokerUnavailable as exc:
            logger.error(
                "flask-tasks: task %s[%s] was not sent after the transaction committed, "
                "and will not run: %s",
                self.celery_task.name,
                self.task_id,
                exc,
            )
        except Exception:
            logger.exception(
                "flask-tasks: task %s[%s] was not sent after the transaction committed, "
                "and will not run",
                self.celery_task.name,
                self.task_id,
            )


@dataclass
class _Waiting:
    """The tasks registered in one transaction of a session."""

    tasks: list[_PendingTask] = field(default_factory=list)
    committed: bool = False


@dataclass
class _SessionQueue:
    """The tasks waiting on the transactions of one session (kept in ``session.info``)."""

    waiting: dict[SessionTransaction, _Waiting] = field(default_factory=dict)


def apply_on_commit(
    celery_task: FlaskTask,
    args: Any = None,
    kwargs: Any = None,
    session: Any = None,
    **options: Any,
) -> TaskResult[Any]:
    """Send ``celery_task`` once the outermost transaction of ``session`` commits.

    The work behind ``Task.delay_on_commit`` and ``Task.apply_async_on_commit``.
    ``session`` is an SQLAlchemy ``Session`` or ``scoped_session``; by default the current
    app's Flask-SQLAlchemy ``db.session``. The arguments are checked now, as ``delay()``
    checks them, and so is what ``delay()`` takes from the request (owner, request id,
    URL root, locale). When the session is not in a transaction, the task is sent at once.
    Returns the task's handle: its id is final, but until the commit the task has no
    record.
    """
    target = _resolve_session(session)
    args = tuple(args or ())
    kwargs = dict(kwargs or {})
    settings: Settings | None = getattr(celery_task.app, "tasks_settings", None)
    if settings is not None:
        check_arguments(celery_task.name, args, kwargs, settings.max_argument_bytes)
    celery_task._check_signature(args, kwargs)
    _capture_request_data(celery_task, options)
    task_id = options.pop("task_id", None) or uuid()

    transaction = target.get_nested_transaction() or target.get_transaction()
    if transaction is None:  # not in a transaction: there is nothing to wait for
        result: TaskResult[Any] = _PendingTask(celery_task, args, kwargs, task_id, options).send()
        return result

    # The caller keeps its objects: what is sent is what they held at this call.
    pending = _PendingTask(
        celery_task, copy.deepcopy(args), copy.deepcopy(kwargs), task_id, options
    )
    _queue(target).waiting.setdefault(transaction, _Waiting()).tasks.append(pending)
    handle: TaskResult[Any] = celery_task.AsyncResult(task_id)
    return handle


def _capture_request_data(celery_task: FlaskTask, options: dict[str, Any]) -> None:
    """Take now what ``delay()`` would take from the request (or the running task).

    At commit time the request may be gone. The request data travels in the message
    headers, where the headers captured now fill in whatever is missing then; the owner
    is also passed as :data:`~flask_tasks.task.OWNER_OPTION`, so the record gets it.
    """
    carried = celery_task._carry({})
    if carried:
        options["headers"] = {**carried, **(options.get("headers") or {})}
    options[OWNER_OPTION] = carried.get(H_OWNER)


def _resolve_session(session: Any) -> Session:
    """The :class:`Session` to follow: the one given, or Flask-SQLAlchemy's ``db.session``."""
    if session is None:
        if not has_app_context():
            raise RuntimeError(
                "delay_on_commit() follows Flask-SQLAlchemy's 'db.session', which needs an "
                "app context. Call it inside a request or 'with app.app_context():', or pass "
                "the session to follow: "
                "'task.apply_async_on_commit(args, kwargs, session=session)'."
            )
        db = current_app.extensions.get("sqlalchemy")
        if db is None:
            raise RuntimeError(
                "delay_on_commit() has no session to follow: the current Flask app does not "
                "use Flask-SQLAlchemy. Did you forget to call 'db.init_app(app)'? To follow "
                "another SQLAlchemy session, pass it: "
                "'task.apply_async_on_commit(args, kwargs, session=session)'."
            )
        session = db.session
    if isinstance(session, scoped_session):
        session = session()  # this scope's (thread's, app context's) own Session
    if not isinstance(session, Session):
        raise TypeError(
            f"session must be an SQLAlchemy Session or scoped_session, not "
            f"{type(session).__name__}; for an AsyncSession, pass its '.sync_session'."
        )
    return session


def _queue(session: Session) -> _SessionQueue:
    """The session's waiting tasks; the first call also starts listening to its events."""
    queue: _SessionQueue | None = session.info.get(_INFO_KEY)
    if queue is None:  # a Session is used by one thread at a time: no lock needed
        queue = session.info[_INFO_KEY] = _SessionQueue()
        event.listen(session, "after_commit", _after_commit)
        event.listen(session, "after_transaction_end", _after_transaction_end)
    return queue


def _after_commit(session: Session) -> None:
    """The innermost transaction (a released savepoint, or the root) has committed."""
    queue: _SessionQueue | None = session.info.get(_INFO_KEY)
    if queue is None or not queue.waiting:
        return
    # Inner transactions have already ended, so the committing one is the innermost:
    # the savepoint being released, or the root once no savepoint is left.
    transaction = session.get_nested_transaction() or session.get_transaction()
    waiting = queue.waiting.get(transaction) if transaction is not None else None
    if waiting is not None:
        waiting.committed = True


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    """Hand a released savepoint's tasks up, send a committed root's, drop the rest."""
    queue: _SessionQueue | None = session.info.get(_INFO_KEY)
    if queue is None:
        return
    waiting = queue.waiting.pop(transaction, None)
    if waiting is None:
        return
    if not waiting.committed:
        for pending in waiting.tasks:
            logger.debug(
                "flask-tasks: task %s[%s] dropped: its transaction was rolled back",
                pending.celery_task.name,
                pending.task_id,
            )
        return
    enclosing = _enclosing(transaction)
    if enclosing is not None:  # a released savepoint: its tasks wait for the outer commit
        queue.waiting.setdefault(enclosing, _Waiting()).tasks.extend(waiting.tasks)
        return
    for pending in waiting.tasks:
        pending.send_after_commit()


def _enclosing(transaction: SessionTransaction) -> SessionTransaction | None:
    """The savepoint or root transaction around ``transaction`` (skipping internal ones)."""
    parent = transaction.parent
    while parent is not None and not parent.nested and parent.parent is not None:
        parent = parent.parent
    return parent
