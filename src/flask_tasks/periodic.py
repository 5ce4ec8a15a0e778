"""Periodic tasks: ``@tasks.periodic(...)``, ``TASKS_SCHEDULE``, and the beat that runs them.

Entries come from three places, merged by name into each app's Celery ``beat_schedule``
(highest precedence first): ``TASKS_SCHEDULE``, the ``beat_schedule`` Celery setting, and
``@tasks.periodic``. Explicit configuration wins, so an operator can change or (with
``None`` in ``TASKS_SCHEDULE``) turn off a schedule declared in code.

Beat runs under :class:`BeatScheduler`, Celery's ``PersistentScheduler`` behind a lock,
so that one app never has two beats sending at once:

* on one machine, an exclusive ``flock`` on ``<instance folder>/beat.lock``, which the
  kernel releases when its process dies;
* when the record store is Redis, also a lease in it (``<prefix>:beat:lock``, set with
  ``SET NX PX`` and renewed), for beats on several machines.

A beat without the lock sends nothing and opens no schedule file: it stands by, says once
who holds the lock, and takes over when the holder stops. ``flask tasks beat`` and the
development worker (:class:`EmbeddedBeat`) both run this scheduler.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import inspect
import logging
import math
import os
import socket
import sys
import threading
import time
import types
import uuid
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

from celery.beat import PersistentScheduler
from celery.schedules import BaseSchedule, crontab
from celery.utils.imports import symbol_by_name

from ._arguments import check_arguments
from .exceptions import ConfigError
from .task import Task

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no file lock (see _FileLock)
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from flask import Flask

    from .extension import FlaskCelery, Tasks

P = ParamSpec("P")
R = TypeVar("R")

logger = logging.getLogger("flask_tasks")

SCHEDULER = "flask_tasks.periodic:BeatScheduler"
"""The ``beat_scheduler`` flask-tasks sets, unless the app chose another one."""
CELERY_DEFAULT_SCHEDULER = "celery.beat:PersistentScheduler"
LOCK_FILENAME = "beat.lock"
ENTRY_KEYS = ("task", "schedule", "args", "kwargs", "options", "relative")
SCHEDULE_EXAMPLE = "3600, timedelta(minutes=5), crontab(minute='*/15') or '*/15 * * * *'"
_NO_SIZE_LIMIT = sys.maxsize  # sizes are checked per app, when a run is sent


# -- schedules ----------------------------------------------------------------------------


def as_schedule(value: Any) -> Any:
    """Check a schedule and return what goes into a beat entry.

    Accepts a number of seconds, a ``timedelta`` (both greater than 0), a Celery schedule
    (``crontab``, ``solar``, ``schedule``, or any object with an ``is_due`` method) and a
    cron string of five fields (``"*/15 * * * *"``, turned into a ``crontab``). Raises
    ``TypeError`` for another type and ``ValueError`` for a bad value.
    """
    if isinstance(value, bool):
        raise TypeError(f"{value!r} is not a schedule")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{value!r} is not a number of seconds greater than 0")
        return value
    if isinstance(value, datetime.timedelta):
        if value.total_seconds() <= 0:
            raise ValueError(f"{value!r} is not a duration greater than 0")
        return value
    if isinstance(value, BaseSchedule) or callable(getattr(value, "is_due", None)):
        return value
    if isinstance(value, str):
        if len(value.split()) != 5:
            raise ValueError(
                f"{value!r} is not a cron string: it needs five fields (minute hour "
                "day-of-month month day-of-week)"
            )
        try:
            return crontab.from_string(value)
        except Exception as exc:
            raise ValueError(f"{value!r} is not a valid cron string: {exc}") from None
    raise TypeError(f"{value!r} ({type(value).__name__}) is not a schedule")


# -- entries declared with @tasks.periodic ------------------------------------------------


@dataclass(frozen=True)
class PeriodicEntry:
    """One schedule declared with ``@tasks.periodic``: kept in ``Tasks._periodic``."""

    name: str
    task: str
    schedule: Any
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    fn: Callable[..., Any] | None = field(default=None, compare=False, repr=False)
    """The decorated task's function: tells a module imported again from a second schedule."""
    origin: str = ""
    """Where it was declared, for error messages."""

    def beat_entry(self) -> dict[str, Any]:
        """The entry as Celery's ``beat_schedule`` holds it (fresh containers each call)."""
        return {
            "task": self.task,
            "schedule": self.schedule,
            "args": self.args,
            "kwargs": dict(self.kwargs),
            "options": dict(self.options),
        }

    def redeclares(self, other: PeriodicEntry) -> bool:
        """True when ``other`` is this entry declared again by a module imported twice.

        The same function object twice is not that: it is two schedules stacked on one
        task, which need names of their own.
        """
        if self.fn is None or other.fn is None or self.fn is other.fn:
            return False
        return (self.fn.__module__, self.fn.__qualname__) == (
            other.fn.__module__,
            other.fn.__qualname__,
        )


class PeriodicDecorator(Protocol):
    """What ``tasks.periodic(...)`` returns: it takes a task or a function, returns a task."""

    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


def periodic(
    extension: Tasks,
    schedule: Any,
    *,
    args: tuple[Any, ...] | list[Any] = (),
    kwargs: dict[str, Any] | None = None,
    name: str | None = None,
    **options: Any,
) -> PeriodicDecorator:
    """The work of :meth:`flask_tasks.Tasks.periodic`: check, then return the decorator.

    The decorator takes a task made by ``@tasks.task`` of the same extension, or a plain
    function, which it turns into a task with ``@tasks.task``; it returns the task. The
    entry is added to the ``beat_schedule`` of every app the extension is initialised
    on, now or later. ``options`` are the beat entry's options, passed to each run's
    ``apply_async`` (``queue``, ``expires``, ``priority``, ...).
    """
    if callable(schedule) and not hasattr(schedule, "is_due"):
        raise TypeError(
            "tasks.periodic needs a schedule first: @tasks.periodic(3600) or "
            "@tasks.periodic(crontab(minute='*/15')), above @tasks.task."
        )
    try:
        checked = as_schedule(schedule)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"tasks.periodic: {exc}; pass {SCHEDULE_EXAMPLE}.") from None
    if not isinstance(args, (list, tuple)):
        raise TypeError(f"tasks.periodic: args must be a list or tuple, not {args!r}")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"tasks.periodic: kwargs must be a dict, not {kwargs!r}")
    if name is not None and (not isinstance(name, str) or not name):
        raise TypeError(f"tasks.periodic: name must be a non-empty string, not {name!r}")
    call_args = tuple(args)
    call_kwargs = dict(kwargs or {})

    def decorate(fn: Callable[P, R], /) -> Task[P, R]:
        if isinstance(fn, Task):
            if fn._extension is not extension:
                raise ValueError(
                    f"{fn!r} was declared with another 'Tasks' instance; use that "
                    "instance's periodic decorator."
                )
            function, task_options, label = fn.__wrapped__, fn._definition.options, fn.name
        elif callable(fn) and not isinstance(fn, type):
            function, task_options, label = fn, {}, getattr(fn, "__qualname__", repr(fn))
        else:
            raise TypeError(
                f"@tasks.periodic(...) decorates a function or a task made by @tasks.task, "
                f"not {fn!r}."
            )
        # Checked before a plain function becomes a task: a refused entry leaves nothing.
        try:
            check_arguments(label, call_args, call_kwargs, _NO_SIZE_LIMIT)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"@tasks.periodic(...) for {label!r}: {exc}") from None
        _check_call(function, task_options, label, call_args, call_kwargs)
        task: Task[P, R] = fn if isinstance(fn, Task) else extension.task(fn)
        definition = task._definition
        entry = PeriodicEntry(
            name=name or task.name,
            task=task.name,
            schedule=checked,
            args=call_args,
            kwargs=call_kwargs,
            options=dict(options),
            fn=definition.fn,
            origin=definition.describe(),
        )
        _register(extension, entry)
        return task

    return decorate


def _check_call(
    fn: Callable[..., Any],
    options: Mapping[str, Any],
    task_name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    """Refuse, at declaration, arguments every run would be refused with."""
    if options.get("typing") is False:
        return
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return
    bound_self = (None,) if options.get("bind") else ()
    try:
        signature.bind(*bound_self, *args, **kwargs)
    except TypeError as exc:
        raise TypeError(
            f"@tasks.periodic(...) for {task_name!r}: {exc}; pass the task's "
            "arguments with args=(...) and kwargs={...}."
        ) from None


def _register(extension: Tasks, entry: PeriodicEntry) -> None:
    entries: list[PeriodicEntry] = extension._periodic
    for index, existing in enumerate(entries):
        if existing.name != entry.name:
            continue
        if existing.redeclares(entry):
            entries[index] = entry
            break
        hint = (
            "Several schedules for one task need names of their own"
            if existing.task == entry.task
            else "Give one of them another name"
        )
        raise ValueError(
            f"A periodic entry named {entry.name!r} already exists, declared by "
            f"{existing.origin}; the one of {entry.origin} cannot use the name too. {hint}: "
            "@tasks.periodic(..., name='...')."
        )
    else:
        entries.append(entry)
    for celery_app in list(extension._celery_apps):
        _add_late(celery_app, entry)


# -- per app: the merged beat_schedule ----------------------------------------------------


@dataclass
class _AppSchedule:
    """What :func:`setup_schedule` remembers about one Celery app's schedule."""

    explicit: frozenset[str]
    """Entry names the configuration set (or turned off): ``@tasks.periodic`` never overrides
    them."""
    version: int = 0
    """Bumped when an entry is added after ``init_app``, so a running beat merges it."""


_schedules: weakref.WeakKeyDictionary[Any, _AppSchedule] = weakref.WeakKeyDictionary()
_schedules_lock = threading.Lock()


def _schedule_version(celery_app: Any) -> int:
    state = _schedules.get(celery_app)
    return state.version if state is not None else 0


def _add_late(celery_app: FlaskCelery, entry: PeriodicEntry) -> None:
    """Add an entry declared after ``init_app`` to the app's ``beat_schedule``."""
    with _schedules_lock:
        state = _schedules.get(celery_app)
        if state is None or entry.name in state.explicit:
            return
        schedule = dict(celery_app.conf.beat_schedule or {})
        schedule[entry.name] = entry.beat_entry()
        celery_app.conf.beat_schedule = schedule
        state.version += 1


def setup_schedule(extension: Tasks, app: Flask, celery_app: FlaskCelery) -> None:
    """Check ``TASKS_SCHEDULE`` and merge every source into the app's ``beat_schedule``.

    Called by ``init_app``. By name, ``TASKS_SCHEDULE`` wins over the ``beat_schedule``
    Celery setting, which wins over ``@tasks.periodic``; ``None`` in ``TASKS_SCHEDULE``
    removes an entry. Also installs :class:`BeatScheduler` unless the app set its own
    ``beat_scheduler``.
    """
    configured = _check_config(celery_app.tasks_settings.schedule, celery_app)
    from_celery = dict(celery_app.conf.beat_schedule or {})
    merged: dict[str, Any] = {entry.name: entry.beat_entry() for entry in extension._periodic}
    merged.update(from_celery)
    for name, config_entry in configured.items():
        if config_entry is None:
            merged.pop(name, None)
        else:
            merged[name] = config_entry
    with _schedules_lock:
        celery_app.conf.beat_schedule = merged
        _schedules[celery_app] = _AppSchedule(explicit=frozenset(from_celery) | set(configured))
    if celery_app.conf.beat_scheduler == CELERY_DEFAULT_SCHEDULER:
        celery_app.conf.beat_scheduler = SCHEDULER


def _check_config(config: Mapping[str, Any], celery_app: FlaskCelery) -> dict[str, Any]:
    """``TASKS_SCHEDULE`` checked: name -> Celery beat entry, or None (turned off)."""
    checked: dict[str, Any] = {}
    for name, entry in config.items():
        where = f"TASKS_SCHEDULE[{name!r}]"
        if not isinstance(name, str) or not name:
            raise ConfigError(
                f"TASKS_SCHEDULE has an entry named {name!r}: entry names are non-empty "
                "strings, e.g. {'cleanup': {'task': 'app.tasks.cleanup', 'schedule': 3600}}."
            )
        if entry is None:
            checked[name] = None
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(
                f"{where} = {entry!r} is not valid: expected a dict such as "
                "{'task': 'app.tasks.cleanup', 'schedule': 3600}, or None to turn off the "
                "entry of that name declared with @tasks.periodic."
            )
        checked[name] = _check_entry(where, entry, celery_app)
    return checked


def _check_entry(where: str, entry: Mapping[str, Any], celery_app: FlaskCelery) -> dict[str, Any]:
    for key in entry:
        if key not in ENTRY_KEYS:
            close = difflib.get_close_matches(str(key), ENTRY_KEYS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(
                f"{where} has an unknown key {key!r}.{hint} An entry takes: "
                f"{', '.join(ENTRY_KEYS)}."
            )
    for required in ("task", "schedule"):
        if required not in entry:
            example = "'app.tasks.cleanup'" if required == "task" else "3600"
            raise ConfigError(
                f"{where} has no {required!r}: add it, e.g. {required!r}: {example}."
            )
    task_name = entry["task"]
    if not isinstance(task_name, str):
        task_name = getattr(task_name, "name", None)  # a task object: its name
    if not isinstance(task_name, str) or not task_name:
        raise ConfigError(
            f"{where}['task'] = {entry['task']!r} is not valid: expected a task name, e.g. "
            "'task': 'app.tasks.cleanup'."
        )
    try:
        schedule = as_schedule(entry["schedule"])
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"{where}['schedule'] = {entry['schedule']!r} is not valid: {exc}. Expected a "
            f"number of seconds, a timedelta, a Celery schedule or a cron string: "
            f"{SCHEDULE_EXAMPLE}."
        ) from None
    args = entry.get("args", ())
    if args is None:
        args = ()
    if not isinstance(args, (list, tuple)):
        raise ConfigError(
            f"{where}['args'] = {args!r} is not valid: expected a list, e.g. 'args': [7]."
        )
    kwargs = entry.get("kwargs") or {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ConfigError(
            f"{where}['kwargs'] = {kwargs!r} is not valid: expected a dict with string keys, "
            "e.g. 'kwargs': {'days': 7}."
        )
    options = entry.get("options") or {}
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"{where}['options'] = {options!r} is not valid: expected a dict of apply_async "
            "options, e.g. 'options': {'queue': 'periodic', 'expires': 60}."
        )
    relative = entry.get("relative", False)
    if not isinstance(relative, bool):
        raise ConfigError(
            f"{where}['relative'] = {relative!r} is not valid: expected True or False."
        )
    try:
        check_arguments(task_name, args, kwargs, celery_app.tasks_settings.max_argument_bytes)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}.") from None
    _check_task(where, task_name, args, kwargs, celery_app)
    result: dict[str, Any] = {
        "task": task_name,
        "schedule": schedule,
        "args": tuple(args),
        "kwargs": dict(kwargs),
        "options": dict(options),
    }
    if relative:
        result["relative"] = True
    return result


def _check_task(
    where: str, task_name: str, args: Any, kwargs: Any, celery_app: FlaskCelery
) -> None:
    """Check a configured task name where that can be done without guessing.

    A task registered on the app gets its arguments checked against its signature. A name
    whose module this process has imported must be a task of that module. Any other name
    (a module only the workers import) is accepted: beat sends it by name.
    """
    registered = celery_app._tasks.get(task_name)
    if registered is not None:
        check = getattr(registered, "_check_signature", None)
        if check is not None:
            try:
                check(args, kwargs)
            except TypeError as exc:
                raise ConfigError(
                    f"{where}: {exc}. Fix the entry's 'args' and 'kwargs'."
                ) from None
        return
    if task_name.startswith("celery."):
        return
    module_name, _, attribute = task_name.rpartition(".")
    module = sys.modules.get(module_name) if module_name else None
    if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
        return  # not imported here, or still being imported (init_app above its tasks)
    value = getattr(module, attribute, None)
    if value is not None and not isinstance(value, types.FunctionType):
        return  # a task object (shared_task, a Celery app's task) under that name
    known = [name for name in celery_app._tasks if not name.startswith("celery.")]
    close = difflib.get_close_matches(task_name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    what = (
        f"{attribute!r} in it is a plain function: decorate it with @tasks.task"
        if value is not None
        else f"it has no task {attribute!r}"
    )
    raise ConfigError(
        f"{where}['task'] = {task_name!r} is not a task of this app: module "
        f"{module_name!r} is imported and {what}.{hint}"
    )


# -- the one-beat lock --------------------------------------------------------------------


def _describe_process(role: str) -> str:
    since = datetime.datetime.now().astimezone().replace(microsecond=0).isoformat()
    return f"pid {os.getpid()} on {socket.gethostname()} ({role}), since {since}"


class _FileLock:
    """An exclusive ``flock`` on a file: one holder per machine, freed when it dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, description: str) -> bool:
        if self._fd is not None:
            return True
        if fcntl is None:  # pragma: no cover - Windows
            logger.warning(
                "flask-tasks: no file locks on this platform: nothing stops a second beat "
                "on this machine from sending the schedule too; run one beat only."
            )
            self._fd = -1
            return True
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.write(fd, description.encode())
        self._fd = fd
        return True

    def holder(self) -> str:
        try:
            with open(self.path, encoding="utf-8", errors="replace") as file:
                return file.read().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None and fd >= 0:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing the last descriptor releases the lock


_BOOTTIME: int | None = getattr(time, "CLOCK_BOOTTIME", None)


def _lease_clock() -> float:
    """Seconds on a clock that keeps counting while the machine is suspended, where there
    is one (Linux), so a beat resumed after a suspension knows its lease may be gone."""
    return time.clock_gettime(_BOOTTIME) if _BOOTTIME is not None else time.monotonic()


_ACQUIRE_LEASE = """
local value = redis.call('GET', KEYS[1])
if value == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if value then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RELEASE_LEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class _RedisLease:
    """A lease in Redis: the key holds its holder's token until it expires or is released.

    Taking it and renewing it are one script (``SET NX PX`` or, for its holder, ``PEXPIRE``).
    The holder renews it every third of its lifetime, and trusts it for two thirds after
    the last renewal that succeeded, so a beat cut off from Redis stops sending before
    another one can take the lease.
    """

    def __init__(self, client: Any, key: str, seconds: float) -> None:
        self.client = client
        self.key = key
        self.seconds = seconds
        self._token = ""
        self._confirmed: float | None = None
        self.error: str | None = None
        """Why the last attempt could not reach Redis, if it could not."""
        self._acquire = client.register_script(_ACQUIRE_LEASE)
        self._release = client.register_script(_RELEASE_LEASE)

    def hold(self, description: str) -> bool:
        """Take or renew the lease when due; True while this process may act on it."""
        now = _lease_clock()
        if self._confirmed is not None and now - self._confirmed < self.seconds / 3:
            return True
        if not self._token:
            self._token = f"{description} [{uuid.uuid4().hex[:12]}]"
        try:
            milliseconds = int(self.seconds * 1000)
            taken = bool(self._acquire(keys=[self.key], args=[self._token, milliseconds]))
        except Exception as exc:
            self.error = str(exc) or type(exc).__name__
            if self._confirmed is not None and now - self._confirmed < self.seconds * 2 / 3:
                logger.warning("flask-tasks: could not renew the beat lease %s: %s", self.key, exc)
                return True
            self._confirmed = None
            return False
        self.error = None
        self._confirmed = now if taken else None
        return taken

    def holder(self) -> str:
        try:
            value = self.client.get(self.key)
        except Exception as exc:
            return f"unknown: {exc}"
        if value is None:
            return "nobody, now"
        text = value.decode() if isinstance(value, bytes) else str(value)
        return text.rsplit(" [", 1)[0]

    def release(self) -> None:
        if self._confirmed is None or not self._token:
            return
        self._confirmed = None
        try:
            self._release(keys=[self.key], args=[self._token])
        except Exception as exc:
            logger.warning("flask-tasks: could not release the beat lease %s: %s", self.key, exc)


class BeatLock:
    """Who may run beat for one app: a file lock on this machine, plus a Redis lease.

    ``path`` is the lock file (``<instance folder>/beat.lock``); ``lease`` the Redis
    lease when the record store is Redis. Both are taken without waiting: :meth:`hold`
    answers at once, and a standby beat simply asks again later.
    """

    def __init__(self, path: str, lease: _RedisLease | None, role: str) -> None:
        self.file = _FileLock(path)
        self.lease = lease
        self.role = role
        self.error: str | None = None
        """Why the last :meth:`hold` could not even try (a lock file or Redis problem)."""

    def hold(self) -> bool:
        """Take (or renew) the lock; True while this process holds it."""
        description = _describe_process(self.role)
        self.error = None
        try:
            if not self.file.acquire(description):
                return False
        except OSError as exc:
            self.error = f"its lock file {self.file.path} cannot be used ({exc})"
            return False
        if self.lease is None:
            return True
        held = self.lease.hold(description)
        if not held and self.lease.error is not None:
            self.error = f"the Redis lease {self.lease.key} cannot be reached ({self.lease.error})"
        return held

    def holder(self) -> str:
        """Who holds the lock, as its holder described itself."""
        if not self.file.held:
            return self.file.holder()
        return self.lease.holder() if self.lease is not None else "this process"

    def why_not(self) -> str:
        """Why the last :meth:`hold` failed, in words for a log line."""
        return self.error or f"another beat runs for this app ({self.holder()})"

    def describe(self) -> str:
        where = f"lock file {self.file.path}"
        return where + (f" and Redis lease {self.lease.key}" if self.lease is not None else "")

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
        self.file.release()


def lock_for(
    celery_app: Any, schedule_filename: str | None, role: str, seconds: float
) -> BeatLock:
    """The beat lock of ``celery_app``: its instance folder's lock file, and the Redis lease
    when the record store is Redis."""
    flask_app = getattr(celery_app, "flask_app", None)
    if flask_app is not None:
        path = os.path.join(flask_app.instance_path, LOCK_FILENAME)
    else:
        path = os.path.abspath((schedule_filename or "celerybeat-schedule") + ".lock")
    lease = None
    settings = getattr(celery_app, "tasks_settings", None)
    if settings is not None:
        from .store.redis import RedisStore

        store = celery_app.tasks_store
        if isinstance(store, RedisStore):
            lease = _RedisLease(store.client, f"{store.prefix}:beat:lock", seconds)
    return BeatLock(path, lease, role)


# -- the scheduler ------------------------------------------------------------------------


def command_line() -> str:
    """This process's command line, short, for a lock holder's description."""
    program = sys.argv[0] if sys.argv and sys.argv[0] else "python"
    name = os.path.basename(program)
    if name == "__main__.py":  # python -m flask: name the package
        name = os.path.basename(os.path.dirname(program))
    text = " ".join([name, *sys.argv[1:]])
    return text if len(text) <= 120 else text[:117] + "..."


class BeatScheduler(PersistentScheduler):  # type: ignore[misc]
    """Celery's ``PersistentScheduler`` that only sends while it holds the app's beat lock.

    flask-tasks makes it the ``beat_scheduler`` of its apps unless you chose another one
    (subclass this one to keep the lock). Until it holds the lock it opens no schedule
    file and sends nothing, checking again every :attr:`standby_interval` seconds. It
    also merges entries declared after it started (a module imported late).
    """

    lease_seconds: float = 30.0
    """Lifetime of the Redis lease; a beat that died is replaced after at most this long."""
    standby_interval: float = 1.0
    """Seconds between two attempts of a beat standing by to take the lock."""
    longest_sleep: float = 5.0
    """Most seconds between two ticks: how soon late entries and the lease are looked at."""
    role: str = ""
    """What runs this beat, for the lock's holder description (default: the command line)."""

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        self.beat_lock: BeatLock | None = None
        self.active = False
        self._announced: bool | None = None
        self._version = -1
        super().__init__(app, *args, **kwargs)

    def setup_schedule(self) -> None:
        """Nothing yet: the schedule file is opened once the lock is held (see :meth:`tick`)."""

    def _lock(self) -> BeatLock:
        if self.beat_lock is None:
            self.beat_lock = lock_for(
                self.app, self.schedule_filename, self.role or command_line(), self.lease_seconds
            )
        return self.beat_lock

    def get_schedule(self) -> dict[str, Any]:
        if self._store is None:
            return {}
        entries: dict[str, Any] = self._store["entries"]
        return entries

    schedule = property(get_schedule, PersistentScheduler.set_schedule)

    def announce(self, active: bool, message: str) -> None:
        """Report a change between sending and standing by (logged; the dev worker prints it)."""
        if active:
            logger.info(message)
        else:
            logger.warning(message)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        if self._store is None and not self.app.conf.beat_schedule:
            return self.standby_interval  # nothing to run: no lock taken, no file written
        if not self._hold():
            return float(min(self.standby_interval, self.max_interval))
        if self._store is None:
            self._open()
        elif self._version != _schedule_version(self.app):
            self._merge_late_entries()
        interval: float = super().tick(*args, **kwargs)
        longest = self.longest_sleep
        lock = self.beat_lock
        if lock is not None and lock.lease is not None:
            longest = min(longest, lock.lease.seconds / 3)
        return min(interval, longest)

    def _hold(self) -> bool:
        lock = self._lock()
        held = lock.hold()
        self.active = held
        if self._announced is not held:
            self._announced = held
            if held:
                count = len(self.app.conf.beat_schedule or {})
                self.announce(
                    True,
                    f"flask-tasks: beat is running {count} periodic "
                    f"task{'s' if count != 1 else ''} ({lock.describe()})",
                )
            else:
                self.announce(
                    False,
                    f"flask-tasks: beat is standing by: {lock.why_not()}. It sends nothing "
                    f"until it gets the lock, trying every {self.standby_interval:g} s.",
                )
        return held

    def _open(self) -> None:
        directory = os.path.dirname(self.schedule_filename or "")
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._version = _schedule_version(self.app)
        PersistentScheduler.setup_schedule(self)
        self._warn_unknown_tasks()

    def _merge_late_entries(self) -> None:
        self._version = _schedule_version(self.app)
        self.merge_inplace(self.app.conf.beat_schedule)
        self.install_default_entries(self.schedule)
        self._warn_unknown_tasks()

    def _warn_unknown_tasks(self) -> None:
        known = self.app.tasks
        for name, entry in (self.app.conf.beat_schedule or {}).items():
            task = entry.get("task") if isinstance(entry, Mapping) else None
            if isinstance(task, str) and task not in known:
                logger.warning(
                    "flask-tasks: periodic entry %r runs task %r, which this process does not "
                    "know: beat sends it by name, so a worker must import the module that "
                    "declares it (its record starts when a worker starts it).",
                    name,
                    task,
                )

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._store = None
            self.active = False
            if self.beat_lock is not None:
                self.beat_lock.release()


def scheduler_class(celery_app: Any) -> type[Any]:
    """The app's ``beat_scheduler`` class."""
    cls: type[Any] = symbol_by_name(celery_app.conf.beat_scheduler)
    return cls


def takes_the_lock(celery_app: Any) -> bool:
    """True when the app's beats run :class:`BeatScheduler` (or a subclass), so its lock."""
    try:
        cls = scheduler_class(celery_app)
    except Exception:
        return False
    return isinstance(cls, type) and issubclass(cls, BeatScheduler)


class EmbeddedBeat:
    """Beat in a daemon thread of this process: the development worker's.

    Celery's own embedding (``WorkController(beat=True)``) forks a separate process from
    the worker's thread; this runs the same scheduler in a thread instead, and stops at
    once. It is a :class:`BeatScheduler`, so several processes running one never send
    twice: one sends, the others stand by.
    """

    def __init__(
        self,
        celery_app: FlaskCelery,
        *,
        role: str | None = None,
        announce: Callable[[bool, str], None] | None = None,
    ) -> None:
        self.celery_app = celery_app
        self.scheduler: BeatScheduler = scheduler_class(celery_app)(
            app=celery_app,
            schedule_filename=celery_app.conf.beat_schedule_filename,
            max_interval=celery_app.conf.beat_max_loop_interval or None,
        )
        self.scheduler.role = role or f"development worker of '{command_line()}'"
        if announce is not None:
            self.scheduler.announce = announce
        self._stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="flask-tasks-beat", daemon=True)

    def _run(self) -> None:
        self.celery_app.set_current()
        try:
            while not self._stopping.is_set():
                interval = self.scheduler.tick()
                if interval and interval > 0:
                    self._stopping.wait(interval)
        except Exception:
            logger.exception("flask-tasks: the embedded beat stopped")
        finally:
            try:
                self.scheduler.close()
            except Exception:
                logger.exception("flask-tasks: the embedded beat could not save its schedule")

    def start(self) -> None:
        """Start the thread."""
        self.thread.start()

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop sending, save the schedule, release the lock; True once the thread ended."""
        self._stopping.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout)
        return not self.thread.is_alive()
