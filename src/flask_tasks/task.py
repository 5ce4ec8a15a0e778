"""Tasks: the Celery base class that runs them in the app context, and the typed handle
that ``@tasks.task`` returns.
"""

from __future__ import annotations

import importlib.util
import logging
import re
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from traceback import format_exc
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar
from urllib.parse import urlsplit
from uuid import uuid4

from billiard.exceptions import WorkerLostError
from celery import Task as CeleryTask
from celery.app.task import get_actual_ignore_result
from celery.exceptions import Ignore, Reject, Retry
from celery.result import AsyncResult, EagerResult
from celery.utils import uuid
from flask import current_app, g, has_app_context, has_request_context
from flask import request as flask_request
from kombu.exceptions import OperationalError
from kombu.utils.url import maybe_sanitize_url

from ._arguments import check_arguments, check_result
from ._heartbeat import heartbeats
from .exceptions import BrokerUnavailable, TaskCancelled
from .progress import (
    TaskContext,
    _current,
    current_context,
    stash_final_progress,
    take_final_progress,
)
from .state import TaskRecord, TaskState, utcnow
from .store.base import CancelOutcome, RecordStore, StartDecision, StoreError

if TYPE_CHECKING:
    from flask import Flask

    from .config import Settings
    from .extension import Tasks

logger = logging.getLogger("flask_tasks")
_HAS_BABEL = importlib.util.find_spec("flask_babel") is not None

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class TaskResult(AsyncResult, Generic[R_co]):  # type: ignore[misc]
    """The handle ``delay()`` and ``apply_async()`` return: a Celery ``AsyncResult``.

    ``handle.id`` is the task id; ``handle.get(timeout=...)`` waits for the return value.
    """

    if TYPE_CHECKING:
        id: str

        def get(
            self,
            timeout: float | None = None,
            propagate: bool = True,
            interval: float = 0.5,
            **kwargs: Any,
        ) -> R_co: ...

    @property
    def record(self) -> TaskRecord | None:
        """The task's record (state, progress, result or error), or None if unknown."""
        store: RecordStore = self.app.tasks_store
        return store.get(self.id)

    def cancel(self, *, terminate: bool = False) -> CancelOutcome:
        """Cancel the task: see :meth:`flask_tasks.Tasks.cancel`."""
        return cancel_task(self.app, self.id, terminate=terminate)


def cancel_task(celery_app: Any, task_id: str, *, terminate: bool = False) -> CancelOutcome:
    """Cancel a task of ``celery_app`` (the work of ``Tasks.cancel``).

    A queued task is marked ``cancelled`` and never starts, on every broker. A running one
    gets its cancel flag: its next ``progress()`` raises ``TaskCancelled``. With
    ``terminate=True`` a running task's process is also stopped through Celery's remote
    control (``revoke(terminate=True)``), where the broker has one (not the embedded one).
    """
    store: RecordStore = celery_app.tasks_store
    outcome = store.request_cancel(task_id)
    settings: Settings = celery_app.tasks_settings
    if terminate and outcome is CancelOutcome.REQUESTED and not settings.embedded:
        celery_app.control.revoke(task_id, terminate=True)
    return outcome


class EagerTaskResult(EagerResult, TaskResult[R_co]):  # type: ignore[misc]
    """What ``delay()`` returns when tasks run eagerly: the result is already there."""


def _same_app_active(flask_app: Flask) -> bool:
    return has_app_context() and current_app._get_current_object() is flask_app  # type: ignore[attr-defined]


class FlaskTask(CeleryTask):  # type: ignore[misc]
    """The Celery task class of every Celery app flask-tasks creates.

    * runs the task inside an app context of its Flask app. A worker gives each run a fresh
      context (even if a process-wide one was pushed, as in the old ``celery_worker.py``
      recipe) so ``g`` and ``db.session`` never leak between tasks; an eager or direct
      call reuses the caller's context when it belongs to the same app, so the task sees
      the caller's SQLAlchemy session;
    * refuses arguments that are not plain JSON or are too big, before anything is sent;
    * turns a broker that cannot be reached into :class:`~flask_tasks.BrokerUnavailable`.

    Pass a subclass as ``base=`` to add behaviour of your own.
    """

    #: Routing options given to ``@tasks.task`` (``queue``, ``routing_key``, ...). Celery
    #: deprecates them as task attributes, so they are applied per call instead, where a
    #: call's own options still win.
    default_routing: dict[str, Any] = {}

    #: ``@tasks.task(request_context=True)``: run inside a request context rebuilt from
    #: the request that sent the task (path, method, URL root, TASKS_REQUEST_HEADERS).
    request_context: bool = False

    #: ``@tasks.task(idempotent=True)``: safe to run again after its worker was lost, so
    #: it acks late and is delivered again, up to ``max_retries`` times (see
    #: ``docs/reliability.md``). Other tasks run at most once.
    idempotent: bool = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        flask_app: Flask | None = getattr(self.app, "flask_app", None)
        request = self.request
        # The worker (and eager ``apply()``) pushes a request before calling the task;
        # a direct call ``task(...)`` does not, and Celery's own ``__call__`` does that.
        if request.called_directly:
            with self._context(flask_app, {}, reuse=True):
                return super().__call__(*args, **kwargs)
        carried = _carried(request)
        store: RecordStore | None = getattr(self.app, "tasks_store", None)
        ctx = self._start(store, request, carried)
        if ctx is None:  # final already: cancelled while it was queued
            raise Ignore()
        token = _current.set(ctx)
        settings: Settings | None = getattr(self.app, "tasks_settings", None)
        lost_timeout = settings.worker_lost_timeout if settings is not None else 60.0
        if store is not None:
            heartbeats.add(store, request.id, timeout=lost_timeout)
        try:
            with self._context(flask_app, carried, reuse=bool(request.is_eager)):
                result = self.run(*args, **kwargs)
                check_result(self.name, result)
        except TaskCancelled:
            stash_final_progress(ctx)
            self.backend.mark_as_revoked(request.id, "cancelled", request=request)
            raise Ignore() from None
        except (Ignore, Reject):
            take_final_progress(ctx.id)
            raise
        except Retry:
            raise
        except Exception as exc:
            if request.is_eager and store is not None:
                # Eager tasks that propagate their exception skip Celery's own failure
                # write (a second one, when Celery makes it, is refused as final).
                stash_final_progress(ctx)
                self.backend.mark_as_failure(
                    request.id, exc, traceback=format_exc(), request=request, call_errbacks=False
                )
            raise
        finally:
            stash_final_progress(ctx)
            _current.reset(token)
            if store is not None:
                heartbeats.remove(store, request.id)
        if store is not None and get_actual_ignore_result(self, request):
            # Celery stores nothing for such tasks; the record must still end.
            self.backend.store_result(request.id, None, "SUCCESS", request=request)
        return result

    def _context(
        self, flask_app: Flask | None, carried: dict[str, Any], reuse: bool
    ) -> AbstractContextManager[Any]:
        """The Flask context to run in: the caller's (eager, same app), a request context
        rebuilt from the sending request (``request_context=True``), or an app context
        whose URL adapter knows the sending request's URL root (so ``url_for(...,
        _external=True)`` works without ``SERVER_NAME``)."""
        if flask_app is None or (reuse and _same_app_active(flask_app)):
            return nullcontext()
        url_root = carried.get(H_URL_ROOT)
        sent_from = carried.get(H_REQUEST)
        if self.request_context:
            sent_from = sent_from if isinstance(sent_from, dict) else {}
            return flask_app.test_request_context(
                sent_from.get("path") or "/",
                base_url=url_root or None,
                method=sent_from.get("method") or "GET",
                query_string=sent_from.get("query") or "",
                headers=sent_from.get("headers") or {},
            )
        app_ctx = flask_app.app_context()
        if url_root and not flask_app.config.get("SERVER_NAME"):
            parts = urlsplit(url_root)
            app_ctx.url_adapter = flask_app.url_map.bind(
                parts.netloc, script_name=parts.path or "/", url_scheme=parts.scheme or "http"
            )
        return app_ctx

    def _start(
        self, store: RecordStore | None, request: Any, carried: dict[str, Any]
    ) -> TaskContext | None:
        """Mark the record running (None: it was cancelled while queued) and make the
        task's context."""
        settings: Settings | None = getattr(self.app, "tasks_settings", None)
        attempt = (request.retries or 0) + 1
        owner = carried.get(H_OWNER)
        redelivered = (request.delivery_info or {}).get("redelivered")
        if store is not None and redelivered and not self._redelivery_may_run(store, request):
            return None
        if store is not None:
            queue = (request.delivery_info or {}).get("routing_key") or None
            try:
                decision = store.mark_running(
                    request.id,
                    name=self.name,
                    attempt=attempt,
                    started_at=utcnow(),
                    queue=queue,
                    owner=owner,
                )
            except StoreError:
                logger.exception("flask-tasks: could not record the start of task %s", request.id)
            else:
                if decision is StartDecision.SKIP:
                    logger.info(
                        "flask-tasks: task %s[%s] was cancelled; not run", self.name, request.id
                    )
                    return None
        return TaskContext(
            id=request.id,
            name=self.name,
            attempt=attempt,
            store=store,
            interval=settings.progress_interval if settings is not None else 0.2,
            owner=owner,
            request_id=carried.get(H_REQUEST_ID),
            url_root=carried.get(H_URL_ROOT),
            locale=carried.get(H_LOCALE),
        )

    def _redelivery_may_run(self, store: RecordStore, request: Any) -> bool:
        """A message the broker delivered again: may it run?

        Yes when its record shows it never started (it was only prefetched by a worker
        that stopped). When it did start, its worker was lost (or, on Redis, the
        visibility timeout passed): a task that acks late (``idempotent=True``) is retried,
        which counts against ``max_retries`` and fails with ``WorkerLostError`` past it;
        any other task is not run twice (at most once), and its record is left to the run
        that started it, or to the sweep for lost workers.
        """
        try:
            prior = store.get(request.id)
        except StoreError:
            logger.exception("flask-tasks: could not read the record of task %s", request.id)
            return True
        if prior is None or prior.state is not TaskState.RUNNING:
            return True
        if not self.acks_late:
            logger.warning(
                "flask-tasks: task %s[%s] was delivered again after it started; not run "
                "twice (it is not idempotent)",
                self.name,
                request.id,
            )
            return False
        retries = request.retries or 0
        logger.warning(
            "flask-tasks: task %s[%s] lost its worker while running (attempt %s); %s",
            self.name,
            request.id,
            prior.attempt,
            "giving up"
            if self.max_retries is not None and retries >= self.max_retries
            else "retrying",
        )
        exc = WorkerLostError(
            f"Worker lost: the worker running this task stopped, {retries + 1} time(s); "
            f"max_retries={self.max_retries} reached, so it is not run again."
        )
        # Raises Retry (a new message, retries + 1), or ``exc`` past max_retries.
        raise self.retry(exc=exc, countdown=self.default_retry_delay)

    def delay_on_commit(self, *args: Any, **kwargs: Any) -> Any:
        """Send once the current database transaction commits (see ``Task.delay_on_commit``)."""
        from .transactions import apply_on_commit

        return apply_on_commit(self, args, kwargs)

    def apply_async_on_commit(
        self, args: Any = None, kwargs: Any = None, *, session: Any = None, **options: Any
    ) -> Any:
        """``apply_async`` once ``session``'s transaction commits."""
        from .transactions import apply_on_commit

        return apply_on_commit(self, args, kwargs, session=session, **options)

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        result = super().apply(*args, **kwargs)
        result.__class__ = EagerTaskResult  # same layout; adds TaskResult's methods
        return result

    def apply_async(
        self,
        args: Any = None,
        kwargs: Any = None,
        task_id: str | None = None,
        producer: Any = None,
        link: Any = None,
        link_error: Any = None,
        shadow: str | None = None,
        **options: Any,
    ) -> Any:
        settings: Settings | None = getattr(self.app, "tasks_settings", None)
        if settings is not None:
            check_arguments(self.name, args, kwargs, settings.max_argument_bytes)
        for key, value in self.default_routing.items():
            options.setdefault(key, value)
        if settings is not None:
            # Celery's pure-Python saferepr of the arguments is a large part of a publish;
            # these are plain JSON values by now, so the built-in repr is safe and fast.
            options.setdefault("argsrepr", _short_repr(args or ()))
            options.setdefault("kwargsrepr", _short_repr(kwargs or {}))
        carried = self._carry(options)
        if carried:
            options["headers"] = {**(options.get("headers") or {}), **carried}
        store: RecordStore | None = getattr(self.app, "tasks_store", None)
        finish = None
        if store is not None:
            self._check_signature(args, kwargs)  # before a record exists, not after
            task_id = task_id or uuid()
            finish = self._create_record(store, task_id, options, carried.get(H_OWNER))
            if finish is None:
                store = None  # the store failed: nothing to finish or to remove
            elif self.app.conf.task_always_eager:
                self._finish(finish, task_id)  # the task runs right now
                finish = None
        try:
            result = super().apply_async(
                args, kwargs, task_id, producer, link, link_error, shadow, **options
            )
        except BaseException as exc:
            # In eager mode the task ran here: its failure is recorded, not a lost message.
            eager = self.app.conf.task_always_eager
            if store is not None and task_id is not None and not eager:
                self._discard_record(store, task_id, finish)
            if isinstance(exc, OperationalError):
                raise self._unavailable(exc, settings) from exc
            raise
        if finish is not None:
            self._finish(finish, task_id)
        return result

    def _check_signature(self, args: Any, kwargs: Any) -> None:
        header = getattr(self, "__header__", None)
        if self.typing and header is not None:
            try:
                header(*(args or ()), **(kwargs or {}))
            except TypeError as exc:
                raise TypeError(f"{self.name}: {exc}") from None

    def _carry(self, options: dict[str, Any]) -> dict[str, Any]:
        """What travels from the sending request (or task) in the message headers."""
        owner_given = options.pop(OWNER_OPTION, _UNSET)
        data: dict[str, Any] = {}
        if has_request_context():
            extension = getattr(self.app, "tasks_extension", None)
            if extension is not None:
                data[H_OWNER] = extension.current_owner() if owner_given is _UNSET else owner_given
            data[H_REQUEST_ID] = _request_id()
            data[H_URL_ROOT] = flask_request.url_root
            data[H_LOCALE] = _babel_locale()
            if self.request_context:
                settings: Settings | None = getattr(self.app, "tasks_settings", None)
                names = settings.request_headers if settings is not None else ()
                data[H_REQUEST] = {
                    "path": flask_request.path,
                    "method": flask_request.method,
                    "query": flask_request.query_string.decode("latin-1"),
                    "headers": {
                        name: value
                        for name in names
                        if (value := flask_request.headers.get(name)) is not None
                    },
                }
        else:
            parent = current_context()  # a task sending a task passes its request on
            if parent is not None:
                data[H_OWNER] = parent.owner
                data[H_REQUEST_ID] = parent.request_id
                data[H_URL_ROOT] = parent.url_root
                data[H_LOCALE] = parent.locale
            if owner_given is not _UNSET:
                data[H_OWNER] = owner_given
        return {key: value for key, value in data.items() if value is not None}

    def _create_record(
        self, store: RecordStore, task_id: str, options: dict[str, Any], owner: str | None
    ) -> Callable[..., None] | None:
        queue = options.get("queue")
        now = utcnow()
        record = TaskRecord(
            id=task_id,
            name=self.name,
            state=TaskState.QUEUED,
            submitted_at=now,
            updated_at=now,
            owner=owner,
            queue=getattr(queue, "name", queue) or self.app.conf.task_default_queue,
        )
        try:
            return store.create_pipelined(record)
        except StoreError:
            logger.exception("flask-tasks: could not record task %s as queued", task_id)
            return None

    @staticmethod
    def _finish(finish: Callable[..., None], task_id: str | None) -> None:
        try:
            finish()
        except StoreError:
            logger.exception("flask-tasks: could not record task %s as queued", task_id)

    @staticmethod
    def _discard_record(
        store: RecordStore, task_id: str, finish: Callable[..., None] | None
    ) -> None:
        """A message that was never sent leaves no record behind.

        The publish already used up its time, so the record write gets a short grace to
        answer; a store that does not (it is down too) is not waited for again.
        """
        try:
            if finish is not None:
                finish(timeout=_DISCARD_GRACE)
            store.delete(task_id)
        except StoreError:
            logger.warning(
                "flask-tasks: task %s was not sent, and its record could not be removed; "
                "it may show as queued until it expires",
                task_id,
            )

    def _unavailable(self, exc: BaseException, settings: Settings | None) -> BrokerUnavailable:
        timeout = settings.publish_timeout if settings is not None else None
        return BrokerUnavailable(
            f"Could not send task {self.name!r}: the broker at "
            f"{maybe_sanitize_url(self.app.conf.broker_url)!r} is not reachable"
            + (f" (gave up after TASKS_PUBLISH_TIMEOUT={timeout:g}s)" if timeout else "")
            + f": {exc}. Nothing was sent."
        )


# Message headers that carry the sending request's data to the task.
H_OWNER = "flask_tasks_owner"
H_REQUEST_ID = "flask_tasks_request_id"
H_URL_ROOT = "flask_tasks_url_root"
H_LOCALE = "flask_tasks_locale"
H_REQUEST = "flask_tasks_request"
_HEADERS = (H_OWNER, H_REQUEST_ID, H_URL_ROOT, H_LOCALE, H_REQUEST)
#: ``apply_async`` option: the owner to record, instead of the current request's (used by
#: ``delay_on_commit``, which captures it at call time and sends after the request).
OWNER_OPTION = "_flask_tasks_owner"
_UNSET: Any = object()
_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces


def _carried(request: Any) -> dict[str, Any]:
    """The request data a task received: message headers are request attributes in a
    worker, and a ``headers`` dict in eager mode."""
    headers = getattr(request, "headers", None) or {}
    return {
        name: value
        for name in _HEADERS
        if (value := getattr(request, name, None) or headers.get(name)) is not None
    }


def _request_id() -> str:
    """The request's ``X-Request-ID`` (when sane), else one made up once per request."""
    known: str | None = g.get("_flask_tasks_request_id")
    if known is None:
        given = flask_request.headers.get("X-Request-ID", "")
        known = given if _REQUEST_ID.fullmatch(given) else uuid4().hex
        g._flask_tasks_request_id = known
    return known


def _babel_locale() -> str | None:
    if not _HAS_BABEL or "babel" not in current_app.extensions:
        return None
    try:
        from flask_babel import get_locale

        locale = get_locale()
    except Exception:  # a misconfigured selector must not break delay()
        logger.exception("flask-tasks: could not read the locale from Flask-Babel")
        return None
    return str(locale) if locale is not None else None


_REPR_MAX = 1024  # Celery's default argsrepr_maxsize
_DISCARD_GRACE = 0.25  # seconds


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_MAX else text[: _REPR_MAX - 3] + "..."


def module_name(module: str) -> str:
    """The name a worker imports ``module`` under: ``__main__`` becomes the script's name.

    Run as ``python app.py``, a task's module is ``__main__``, while ``flask tasks worker``
    imports it as ``app``; both must agree on the task name.
    """
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    main_file = getattr(main, "__file__", None)
    if spec is not None and spec.name:
        return str(spec.name)
    if main_file:
        return Path(main_file).stem
    return module


def _default_name(fn: Callable[..., Any]) -> str:
    return f"{module_name(fn.__module__)}.{fn.__name__}"


def _where(fn: Callable[..., Any]) -> str:
    code = getattr(fn, "__code__", None)
    place = f" ({code.co_filename}:{code.co_firstlineno})" if code is not None else ""
    return f"{fn.__module__}.{fn.__qualname__}{place}"


@dataclass
class TaskDefinition:
    """What ``@tasks.task`` recorded: bound to each app's Celery when ``init_app`` runs."""

    fn: Callable[..., Any]
    name: str
    options: dict[str, Any] = field(default_factory=dict)

    def same_function(self, fn: Callable[..., Any]) -> bool:
        """True for the same function, also when its module was imported again."""
        return fn is self.fn or (
            fn.__module__ == self.fn.__module__ and fn.__qualname__ == self.fn.__qualname__
        )

    def describe(self) -> str:
        return _where(self.fn)


_HAS_RETRY_ON_WORKER_LOST = hasattr(CeleryTask, "retry_on_worker_lost")  # Celery >= 5.7
ROUTING_OPTIONS = ("queue", "exchange", "routing_key", "priority", "delivery_mode")


def build_options(
    fn: Callable[..., Any],
    name: str | None,
    retry_for: tuple[type[BaseException], ...] | None,
    options: dict[str, Any],
) -> TaskDefinition:
    """Turn decorator arguments into a :class:`TaskDefinition` (Celery options + ours)."""
    opts = dict(options)
    if retry_for:
        if "autoretry_for" in opts:
            raise TypeError("Pass either retry_for or autoretry_for, not both.")
        opts["autoretry_for"] = tuple(retry_for)
        opts.setdefault("retry_backoff", True)
        opts.setdefault("retry_backoff_max", 600)
        opts.setdefault("retry_jitter", True)
    idempotent = opts.pop("idempotent", False)
    if not isinstance(idempotent, bool):
        raise TypeError(f"idempotent must be True or False, not {idempotent!r}")
    if idempotent:
        # Acked once done, delivered again when the worker is lost; bounded by
        # max_retries (Celery's retry_on_worker_lost where it exists, else our check of
        # redelivered messages in FlaskTask._redelivery_may_run).
        opts["idempotent"] = True
        opts.setdefault("acks_late", True)
        opts.setdefault("reject_on_worker_lost", True)
        if _HAS_RETRY_ON_WORKER_LOST:
            opts.setdefault("retry_on_worker_lost", True)
    routing = {key: opts.pop(key) for key in ROUTING_OPTIONS if key in opts}
    if routing:
        opts["default_routing"] = routing
    base = opts.get("base")
    if base is not None and not (isinstance(base, type) and issubclass(base, CeleryTask)):
        raise TypeError(f"base must be a Celery Task subclass, not {base!r}")
    return TaskDefinition(fn=fn, name=name or _default_name(fn), options=opts)


class Task(Generic[P, R]):
    """What ``@tasks.task`` returns: a typed handle on the task, valid before any app exists.

    Calls go to the task bound to the current Flask app's Celery app (outside an app
    context: Celery's current app, or the only app this extension was initialised on).
    ``delay()`` and calling take the function's own parameters, so type checkers catch a
    wrong argument. Anything else (``s``, ``si``, ``map``, ``chunks``, ``AsyncResult``, ...)
    is Celery's own task attribute.
    """

    def __init__(self, extension: Tasks, definition: TaskDefinition) -> None:
        self._extension = extension
        self._definition = definition
        self.name = definition.name
        self.__wrapped__ = definition.fn
        self.__doc__ = definition.fn.__doc__
        self.__name__ = getattr(definition.fn, "__name__", definition.name)
        self.__qualname__ = getattr(definition.fn, "__qualname__", self.__name__)
        self.__module__ = definition.fn.__module__

    @property
    def celery_task(self) -> Any:
        """The Celery task object for the current app (see the class docstring)."""
        return self._extension.celery_task(self.name)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> TaskResult[R]:
        """Send the task with these arguments; returns its handle at once."""
        result: TaskResult[R] = self.celery_task.apply_async(args, kwargs)
        return result

    def apply_async(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        **options: Any,
    ) -> TaskResult[R]:
        """Send the task with Celery's options (``countdown``, ``queue``, ``task_id``, ...)."""
        result: TaskResult[R] = self.celery_task.apply_async(args, kwargs, **options)
        return result

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> TaskResult[R]:
        """Send the task once the current database transaction commits; drop it on rollback.

        Uses Flask-SQLAlchemy's ``db.session``; see :meth:`apply_async_on_commit` for
        another session. The id is known at once (``handle.id``).
        """
        from .transactions import apply_on_commit

        result: TaskResult[R] = apply_on_commit(self.celery_task, args, kwargs)
        return result

    def apply_async_on_commit(
        self,
        args: tuple[Any, ...] | list[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        *,
        session: Any = None,
        **options: Any,
    ) -> TaskResult[R]:
        """``apply_async`` once ``session``'s transaction commits (see ``delay_on_commit``)."""
        from .transactions import apply_on_commit

        result: TaskResult[R] = apply_on_commit(
            self.celery_task, args, kwargs, session=session, **options
        )
        return result

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run the task here and now, inside the app context."""
        result: R = self.celery_task(*args, **kwargs)
        return result

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.celery_task, name)

    def __repr__(self) -> str:
        return f"<flask_tasks.Task {self.name!r}>"
