"""The ``Tasks`` extension: one Celery app per Flask app, tasks declared before either."""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Concatenate, Literal, ParamSpec, TypeVar, overload

from celery import Celery
from celery._state import get_current_app
from celery.signals import worker_process_init
from flask import current_app, has_app_context, has_request_context
from kombu.transport import TRANSPORT_ALIASES

from . import backends
from ._cache import RecordCache
from ._heartbeat import WorkerLostSweep
from .config import EMBEDDED_SCHEME, Settings, resolve
from .exceptions import ConfigError
from .state import TaskRecord
from .store import create_store
from .store.base import CancelOutcome, RecordStore
from .task import (
    FlaskTask,
    Task,
    TaskDefinition,
    TaskResult,
    build_options,
    cancel_task,
    module_name,
)

if TYPE_CHECKING:
    from flask import Flask

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("flask_tasks")
STATUS_CACHE_RUNNING = 0.2  # seconds, at most; never longer than TASKS_PROGRESS_INTERVAL
STATUS_CACHE_FINISHED = 10.0
_HAS_FLASK_LOGIN = importlib.util.find_spec("flask_login") is not None

# The embedded broker's transport, by name: Kombu imports it (and SQLAlchemy, about 23 MiB
# per process) only when a broker URL uses it, not on Redis or RabbitMQ.
TRANSPORT_ALIASES[EMBEDDED_SCHEME] = "flask_tasks.transport:Transport"
backends.register()


class FlaskCelery(Celery):  # type: ignore[misc]
    """The Celery app flask-tasks creates for one Flask app.

    A plain :class:`celery.Celery` that also knows its Flask app (``flask_app``) and the
    resolved flask-tasks settings (``tasks_settings``). ``celery worker -A`` and everything
    else Celery offers work on it unchanged.
    """

    def __init__(self, flask_app: Flask, settings: Settings, extension: Tasks) -> None:
        self.flask_app = flask_app
        self.tasks_settings = settings
        self.tasks_extension = extension
        self._tasks_store: RecordStore | None = None
        self._tasks_store_lock = threading.Lock()
        self.created_in_pid = os.getpid()
        super().__init__(module_name(flask_app.import_name), task_cls=FlaskTask)
        # Lost-worker sweep and Redis visibility timeout (docs/reliability.md).
        self.steps["worker"].add(WorkerLostSweep)

    @property
    def tasks_store(self) -> RecordStore:
        """The record store (created on first use; shared by every thread)."""
        store = self._tasks_store
        if store is None:
            with self._tasks_store_lock:
                if self._tasks_store is None:
                    settings = self.tasks_settings
                    self._tasks_store = create_store(
                        settings.store_url,
                        retention=settings.retention,
                        prefix=settings.store_prefix,
                        **settings.store_options,
                    )
                store = self._tasks_store
        return store

    @cached_property
    def AsyncResult(self) -> type[TaskResult[Any]]:
        result: type[TaskResult[Any]] = self.subclass_with_self(TaskResult)
        return result


@dataclass(eq=False)
class TasksState:
    """What ``init_app`` keeps in ``app.extensions["tasks"]`` for one Flask app."""

    extension: Tasks
    celery: FlaskCelery
    settings: Settings
    cache: RecordCache = field(init=False)
    """Records recently read by the status view (see :meth:`read`)."""

    def __post_init__(self) -> None:
        self.cache = RecordCache(
            running_ttl=min(self.settings.progress_interval, STATUS_CACHE_RUNNING),
            finished_ttl=STATUS_CACHE_FINISHED,
        )

    @property
    def store(self) -> RecordStore:
        """The app's record store."""
        return self.celery.tasks_store

    def read(self, task_id: str) -> TaskRecord | None:
        """A record for a status read, possibly from this process's short-lived cache.

        A running task's record may be up to the progress interval (0.2 s at most) old,
        which is how often its progress is written anyway, and never more than half its
        age (see :class:`RecordCache`); a finished one up to 10 s (it never changes, short
        of a purge).
        """
        record = self.cache.get(task_id)
        if record is None:
            record = self.store.get(task_id)
            if record is not None:
                self.cache.put(record)
        return record


OwnerLoader = Callable[[], Any]
Authorizer = Callable[[str, "TaskRecord | None"], bool]


def _with_flask_task(base: type[Any] | None, cache: dict[type[Any], type[Any]] = {}) -> Any:  # noqa: B006
    """A task base class that also has :class:`FlaskTask`'s behaviour."""
    if base is None or issubclass(base, FlaskTask):
        return base
    if base not in cache:
        cache[base] = type(base.__name__, (base, FlaskTask), {"__module__": base.__module__})
    return cache[base]


class Tasks:
    """Celery background tasks for Flask apps.

    Create it at module level, declare tasks with :meth:`task`, and call :meth:`init_app`
    in your app factory (or pass the app here)::

        tasks = Tasks()

        @tasks.task
        def build_report(report_id: int) -> dict: ...

        def create_app():
            app = Flask(__name__)
            tasks.init_app(app)
            return app

    Each Flask app gets its own Celery app, configured from its config (see
    ``docs/configuration.md``), kept in ``app.extensions["tasks"].celery`` and also in
    ``app.extensions["celery"]`` for code written for Flask's official Celery pattern.
    """

    def __init__(self, app: Flask | None = None) -> None:
        self._definitions: dict[str, TaskDefinition] = {}
        self._celery_apps: weakref.WeakSet[FlaskCelery] = weakref.WeakSet()
        self._owner_loader: OwnerLoader | None = None
        self._authorizer: Authorizer | None = None
        self._periodic: list[Any] = []  # see flask_tasks.periodic
        if app is not None:
            self.init_app(app)

    # -- setup -----------------------------------------------------------------------------

    def init_app(self, app: Flask) -> None:
        """Create and configure the Celery app of ``app`` and bind every declared task."""
        if "tasks" in app.extensions:
            raise RuntimeError(
                "A 'Tasks' instance is already registered on this Flask app. Call "
                "'init_app' once per app; reach the existing one with "
                "'app.extensions[\"tasks\"]'."
            )
        settings = resolve(app.config, instance_path=app.instance_path)
        if settings.embedded_path is not None or settings.store_fallback:
            os.makedirs(app.instance_path, exist_ok=True)
        if settings.store_fallback:
            logger.warning(
                "flask-tasks: the broker cannot keep task records, so they are kept in %s. "
                "That only works while web and workers share this machine: set "
                "TASKS_STORE_URL to a Redis or database URL before adding workers elsewhere.",
                settings.store_url,
            )

        celery_app = FlaskCelery(app, settings, self)
        celery_app.conf.update(settings.celery)
        celery_app.set_default()
        for definition in self._definitions.values():
            self._bind(celery_app, definition)

        app.extensions["tasks"] = TasksState(extension=self, celery=celery_app, settings=settings)
        app.extensions["celery"] = celery_app
        self._celery_apps.add(celery_app)

        from ._logging import install as install_log_fields

        install_log_fields()

        from .periodic import setup_schedule

        setup_schedule(self, app, celery_app)

        from .cli import tasks_cli

        app.cli.add_command(tasks_cli)

        if settings.api:
            from .views import make_blueprint

            app.register_blueprint(make_blueprint(), url_prefix=settings.url_prefix)
        if settings.dashboard:
            self._register_dashboard(app, settings)

        from ._devworker import setup_dev_worker

        setup_dev_worker(app, celery_app)

    def _register_dashboard(self, app: Flask, settings: Settings) -> None:
        if self._authorizer is None and not app.debug:
            raise ConfigError(
                "TASKS_DASHBOARD is on, but no '@tasks.authorize' hook is registered, so "
                "anyone could see and cancel every task. Register one (it is called with "
                "action 'dashboard'; return True for staff) before init_app, or run the "
                "app in debug mode."
            )
        if not settings.api:
            raise ConfigError(
                "TASKS_DASHBOARD needs the HTTP API (its pages use it): leave TASKS_API on."
            )
        from .dashboard import make_blueprint as make_dashboard

        prefix = settings.url_prefix.rstrip("/")
        app.register_blueprint(make_dashboard(), url_prefix=f"{prefix}/dashboard")

    def _state(self) -> TasksState:
        if not has_app_context():
            raise RuntimeError(
                "Working outside of application context. Push one with "
                "'with app.app_context():' to use the app's tasks."
            )
        state: TasksState | None = current_app.extensions.get("tasks")
        if state is None or state.extension is not self:
            raise RuntimeError(
                "The current Flask app is not registered with this 'Tasks' instance. "
                "Did you forget to call 'init_app'?"
            )
        return state

    @property
    def celery(self) -> FlaskCelery:
        """The Celery app of the current Flask app."""
        return self._state().celery

    def _celery_for_call(self) -> FlaskCelery:
        if has_app_context():
            return self._state().celery
        current = get_current_app()
        if current in self._celery_apps:
            result: FlaskCelery = current
            return result
        apps = list(self._celery_apps)
        if len(apps) == 1:
            return apps[0]
        if not apps:
            raise RuntimeError(
                "No Flask app is registered with this 'Tasks' instance yet. "
                "Did you forget to call 'init_app'?"
            )
        raise RuntimeError(
            "Several Flask apps use this 'Tasks' instance; push the app context of the one "
            "to send this task with: 'with app.app_context(): ...'."
        )

    @property
    def store(self) -> RecordStore:
        """The record store of the current Flask app."""
        return self.celery.tasks_store

    # -- records, ownership, cancellation --------------------------------------------------

    def get(self, task_id: str) -> TaskRecord | None:
        """The record of a task of the current app, or None when the id is unknown."""
        return self.celery.tasks_store.get(task_id)

    def cancel(self, task_id: str, *, terminate: bool = False) -> CancelOutcome:
        """Cancel a task of the current app.

        A queued task is marked ``cancelled`` at once and never starts, on every broker
        (the embedded one included). A running task gets a cancel flag that no progress
        write can erase: its next ``progress()`` raises :class:`TaskCancelled` (code
        without progress can poll :func:`is_cancelled`). ``terminate=True`` also stops a
        running task's process through Celery's remote control where the broker has one.
        """
        return cancel_task(self.celery, task_id, terminate=terminate)

    def periodic(
        self,
        schedule: Any,
        *,
        args: tuple[Any, ...] | list[Any] = (),
        kwargs: dict[str, Any] | None = None,
        name: str | None = None,
        **options: Any,
    ) -> Callable[[Any], Any]:
        """Run a task on a schedule: ``@tasks.periodic(crontab(minute="*/15"))``.

        ``schedule`` is a number of seconds, a ``timedelta``, or a Celery schedule
        (``crontab``, ``solar``). Put it above ``@tasks.task`` (or on a plain function,
        which then becomes a task too). See :mod:`flask_tasks.periodic`.
        """
        from .periodic import periodic

        return periodic(self, schedule, args=args, kwargs=kwargs, name=name, **options)

    def owner_loader(self, fn: OwnerLoader) -> OwnerLoader:
        """Decorate the function that names the owner of tasks sent during a request.

        It runs inside the request; return a user id (anything ``str()`` can turn into
        one) or None. Without it, Flask-Login's ``current_user`` is used when Flask-Login
        is installed and the user is authenticated.
        """
        self._owner_loader = fn
        return fn

    def authorize(self, fn: Authorizer) -> Authorizer:
        """Decorate ``fn(action, record) -> bool``: may the current user do ``action``?

        Called for tasks the current user does not own, with ``action`` one of
        ``"read"`` or ``"cancel"`` (and ``record`` the task's record), and for the
        dashboard with ``"dashboard"`` (``record`` None). Return True to allow, e.g. for
        admins. The owner of a task may always read and cancel it.
        """
        self._authorizer = fn
        return fn

    def current_owner(self) -> str | None:
        """The owner of tasks sent now: the owner loader's answer, or Flask-Login's user."""
        if not has_request_context():
            return None
        owner = self._owner_loader() if self._owner_loader is not None else _flask_login_user_id()
        return None if owner is None else str(owner)

    def allowed(self, action: str, record: TaskRecord | None) -> bool:
        """May the current request do ``action`` on ``record`` (see :meth:`authorize`)?"""
        if record is not None and action in ("read", "cancel"):
            if record.owner is None:
                return True  # reachable by its unguessable id only, never listed
            if record.owner == self.current_owner():
                return True
        if self._authorizer is None:
            return False
        try:
            return bool(self._authorizer(action, record))
        except Exception:
            logger.exception("flask-tasks: the authorize hook failed; access denied")
            return False

    def celery_task(self, name: str) -> Any:
        """The Celery task named ``name`` on the Celery app of the current Flask app."""
        return self._celery_for_call().tasks[name]

    # -- declaring tasks -------------------------------------------------------------------

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self,
        *,
        bind: Literal[True],
        name: str | None = None,
        retry_for: tuple[type[BaseException], ...] | None = None,
        **options: Any,
    ) -> Callable[[Callable[Concatenate[Any, P], R]], Task[P, R]]: ...

    @overload
    def task(
        self,
        *,
        bind: Literal[False] = False,
        name: str | None = None,
        retry_for: tuple[type[BaseException], ...] | None = None,
        **options: Any,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        *fn: Callable[..., Any],
        bind: bool = False,
        name: str | None = None,
        retry_for: tuple[type[BaseException], ...] | None = None,
        **options: Any,
    ) -> Any:
        """Declare a background task: ``@tasks.task`` or ``@tasks.task(queue="mail", ...)``.

        Every Celery task option passes through (``queue``, ``bind``, ``max_retries``,
        ``time_limit``, ``rate_limit``, ``ignore_result``, ``base``, ...). ``retry_for`` is
        ``autoretry_for`` with exponential backoff and jitter (up to ``max_retries``,
        Celery's default 3).

        Works before any app exists; the task is bound to every app ``init_app`` is called
        on, earlier or later. Two functions cannot share one task name.
        """
        # ``*fn`` rather than ``fn=None, /``: mypy cannot match the latter to the overloads.
        if len(fn) > 1:
            raise TypeError("@tasks.task takes one function; pass options by keyword.")
        if bind:
            options["bind"] = True

        def decorate(func: Callable[..., Any]) -> Task[Any, Any]:
            definition = build_options(func, name, retry_for, options)
            self._register(definition)
            return Task(self, definition)

        if fn:
            return decorate(fn[0])
        return decorate

    def _register(self, definition: TaskDefinition) -> None:
        existing = self._definitions.get(definition.name)
        if existing is not None and not existing.same_function(definition.fn):
            raise ValueError(
                f"Task name {definition.name!r} is already used by {existing.describe()}; "
                f"{definition.describe()} cannot use it too. Give one of them another name: "
                "@tasks.task(name='...')."
            )
        for celery_app in list(self._celery_apps):
            self._bind(celery_app, definition)
        self._definitions[definition.name] = definition

    def _bind(self, celery_app: FlaskCelery, definition: TaskDefinition) -> None:
        existing = celery_app._tasks.get(definition.name)
        if existing is not None:
            existing_fn = getattr(existing, "_decorated_fun", None)
            if existing_fn is definition.fn:
                return
            if existing_fn is None or not definition.same_function(existing_fn):
                what = _describe_callable(existing_fn) if existing_fn else repr(existing)
                raise ValueError(
                    f"Task name {definition.name!r} is already registered on this Celery "
                    f"app by {what}; {definition.describe()} cannot use it too. Give one of "
                    "them another name: @tasks.task(name='...')."
                )
            del celery_app._tasks[definition.name]
        options = dict(definition.options)
        base = _with_flask_task(options.pop("base", None))
        if base is not None:
            options["base"] = base
        celery_app.task(definition.fn, name=definition.name, shared=False, lazy=False, **options)


def _flask_login_user_id() -> Any:
    if not _HAS_FLASK_LOGIN or not hasattr(current_app, "login_manager"):
        return None
    from flask_login import current_user

    if current_user is None or not current_user.is_authenticated:
        return None
    return current_user.get_id()


def _describe_callable(fn: Callable[..., Any]) -> str:
    return TaskDefinition(fn=fn, name="").describe()


def _dispose_engines_after_fork(**_: Any) -> None:
    """In a prefork child, drop the SQLAlchemy connections inherited from the parent.

    A connection shared by two processes corrupts both; ``dispose(close=False)`` forgets
    the parent's pool without closing its sockets (SQLAlchemy's advice for forks).
    """
    celery_app = get_current_app()
    flask_app = getattr(celery_app, "flask_app", None)
    if flask_app is None or getattr(celery_app, "created_in_pid", None) == os.getpid():
        return  # the solo and threads pools send the signal too, without forking
    db = flask_app.extensions.get("sqlalchemy")
    if db is None:
        return
    with flask_app.app_context():
        for engine in db.engines.values():
            engine.dispose(close=False)


worker_process_init.connect(_dispose_engines_after_fork, weak=False)
