"""Flask configuration -> flask-tasks settings and Celery configuration.

Read once, by :meth:`flask_tasks.Tasks.init_app`. Precedence, highest first:

1. ``TASKS_*`` keys (``TASKS_BROKER_URL``, ``TASKS_RESULT_BACKEND``, then any Celery
   setting inside ``TASKS_CELERY = {...}``),
2. the official pattern's ``CELERY = {...}`` dict,
3. legacy upper-case keys (``CELERY_BROKER_URL``, ``CELERY_TASK_ALWAYS_EAGER``, Celery 3
   names such as ``CELERY_ALWAYS_EAGER``),
4. built-in defaults (JSON only, bounded publish, the embedded SQLite broker).

A ``TASKS_*`` key we do not know, or a Celery setting Celery does not know, is an error that
names the key and the closest valid one. This module imports neither Flask nor a broker.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from celery.app.defaults import _TO_NEW_KEY, SETTING_KEYS

from .exceptions import ConfigError

CELERY_SETTINGS_URL = "https://docs.celeryq.dev/en/stable/userguide/configuration.html"
EMBEDDED_SCHEME = "tasksdb"
EMBEDDED_FILENAME = "tasks.sqlite3"

DevWorker = Literal["auto", True, False]


# -- value checks -------------------------------------------------------------------------


def _bad(key: str, value: Any, expected: str, example: str) -> ConfigError:
    return ConfigError(f"{key} = {value!r} is not valid: expected {expected}, e.g. {example}.")


def _url(key: str, value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise _bad(key, value, "a URL string or None", f'{key} = "redis://127.0.0.1:6379/0"')
    return value


def _mapping(key: str, value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _bad(key, value, "a dict of Celery settings", f'{key} = {{"task_time_limit": 600}}')
    return dict(value)


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(key, value, "a whole number greater than 0", f"{key} = 1048576")
    return value


def _count_or_zero(key: str, value: Any) -> int:
    if value in (0, "0"):
        return 0
    return _positive_int(key, value)


def _positive_seconds(key: str, value: Any) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = float(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise _bad(key, value, "a number of seconds greater than 0", f"{key} = 5")
    return float(value)


def _seconds_or_zero(key: str, value: Any) -> float:
    if value in (0, "0"):
        return 0.0
    return _positive_seconds(key, value)


def _duration(key: str, value: Any) -> datetime.timedelta:
    if isinstance(value, datetime.timedelta):
        if value.total_seconds() <= 0:
            raise _bad(key, value, "a positive duration", f"{key} = timedelta(days=7)")
        return value
    try:
        return datetime.timedelta(seconds=_positive_seconds(key, value))
    except ConfigError:
        raise _bad(
            key, value, "a duration: a timedelta or a number of seconds", f"{key} = 604800"
        ) from None


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _bad(key, value, "True or False", f"{key} = False")


def _url_prefix(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("/"):
        raise _bad(key, value, "a URL path starting with '/'", f'{key} = "/tasks"')
    return value.rstrip("/") or "/"


def _name(key: str, value: Any) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,39}", value):
        raise _bad(
            key, value, "a name of letters, digits and underscores", f'{key} = "flask_tasks"'
        )
    return value


def _header_names(key: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, (list, tuple)) or not all(
        isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9-]+", v) for v in value
    ):
        raise _bad(key, value, "a list of header names", f'{key} = ["Accept-Language"]')
    return tuple(value)


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _dev_worker(key: str, value: Any) -> DevWorker:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered == "auto":
            return "auto"
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
    raise _bad(key, value, '"auto", True or False', f'{key} = "auto"')


# -- the table of TASKS_* keys ------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One ``TASKS_*`` configuration key: its default, its check, and what it does."""

    key: str
    default: Any
    check: Callable[[str, Any], Any]
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "TASKS_BROKER_URL",
        None,
        _url,
        "Broker URL (`redis://...`, `amqp://...`). Unset: the embedded SQLite broker in the "
        "instance folder.",
    ),
    Setting(
        "TASKS_RESULT_BACKEND",
        None,
        _url,
        "Celery result backend URL. Unset: the embedded SQLite file when the broker is "
        "embedded, else Celery's default.",
    ),
    Setting(
        "TASKS_CELERY",
        None,
        _mapping,
        "Any Celery setting, lower-case names (`{'task_time_limit': 600}`). Overrides `CELERY`.",
    ),
    Setting(
        "TASKS_MAX_ARGUMENT_BYTES",
        1024 * 1024,
        _positive_int,
        "Largest JSON-encoded size of a task's arguments; `delay()` refuses bigger ones.",
    ),
    Setting(
        "TASKS_PUBLISH_TIMEOUT",
        5.0,
        _positive_seconds,
        "Seconds `delay()` may spend reaching the broker before it raises `BrokerUnavailable`.",
    ),
    Setting(
        "TASKS_STORE_URL",
        None,
        _url,
        "Where task records live: a Redis URL or an SQLAlchemy database URL. Unset: chosen "
        "from the result backend, the broker, the embedded file or SQLALCHEMY_DATABASE_URI.",
    ),
    Setting(
        "TASKS_STORE_PREFIX",
        "flask_tasks",
        _name,
        "Prefix of the store's Redis keys and SQL table names, for several apps on one server.",
    ),
    Setting(
        "TASKS_RETENTION",
        datetime.timedelta(days=7),
        _duration,
        "How long a record is kept after its last state change (timedelta or seconds).",
    ),
    Setting(
        "TASKS_PROGRESS_INTERVAL",
        0.2,
        _seconds_or_zero,
        "Seconds between two progress writes of one task; calls in between are free.",
    ),
    Setting(
        "TASKS_WORKER_LOST_TIMEOUT",
        60.0,
        _positive_seconds,
        "Seconds without a heartbeat after which a running task that is not idempotent is "
        "marked failed (worker lost) by a worker's sweep. Heartbeats go every quarter of it.",
    ),
    Setting(
        "TASKS_URL_PREFIX",
        "/tasks",
        _url_prefix,
        "Where the HTTP API is mounted.",
    ),
    Setting(
        "TASKS_API",
        True,
        _flag,
        "False: do not register the HTTP API blueprint.",
    ),
    Setting(
        "TASKS_DASHBOARD",
        False,
        _flag,
        "True: mount the dashboard at <TASKS_URL_PREFIX>/dashboard. It needs an "
        "`@tasks.authorize` hook unless the app is in debug mode.",
    ),
    Setting(
        "TASKS_SCHEDULE",
        None,
        _mapping,
        "Periodic tasks: {name: {'task': 'module.function', 'schedule': 30 | timedelta | "
        "crontab(...), 'args': [...], 'kwargs': {...}}}. Run by `flask tasks beat`.",
    ),
    Setting(
        "TASKS_SSE_MAX_PER_CLIENT",
        20,
        _count_or_zero,
        "Most event streams (`GET <prefix>/<id>/events`) one client may hold open in one web "
        "process; more get a 429 with `Retry-After`. A client is its owner (see "
        "`owner_loader`), else its remote address. 0: no limit.",
    ),
    Setting(
        "TASKS_REQUEST_HEADERS",
        ("Accept-Language",),
        _header_names,
        "Request headers that travel with a task sent during a request, for tasks with "
        "`request_context=True`. Cookies and Authorization only travel if listed here.",
    ),
    Setting(
        "TASKS_DEV_WORKER",
        "auto",
        _dev_worker,
        "`auto`: run an in-process worker under `flask run` when the broker is embedded. "
        "`True`: also elsewhere (started by the first request). `False`: never.",
    ),
)
SETTINGS_BY_KEY = {s.key: s for s in SETTINGS}


# -- Celery setting names -----------------------------------------------------------------

_LEGACY_PREFIXES = ("CELERY_", "CELERYD_", "CELERYBEAT_")


def _legacy_names() -> dict[str, str]:
    """Upper-case Flask config key -> Celery setting, for ``CELERY_*`` style keys."""
    names = {"CELERY_" + key.upper(): key for key in SETTING_KEYS}
    # Celery 3 names, and the hybrids Flask-CeleryExt era configs use
    # (CELERY_TASK_EAGER_PROPAGATES_EXCEPTIONS: new namespace, old suffix).
    hybrid = {
        "CELERY_": "CELERY_TASK_",
        "CELERYD_": "CELERY_WORKER_",
        "CELERYBEAT_": "CELERY_BEAT_",
    }
    for old, new in _TO_NEW_KEY.items():
        for prefix, namespaced in hybrid.items():
            if old.startswith(prefix):
                names.setdefault(old, new)
                names.setdefault(namespaced + old[len(prefix) :], new)
                break
    return names


LEGACY_NAMES = _legacy_names()


def _did_you_mean(name: str, candidates: Any) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


def _celery_setting(name: Any, source: str) -> str:
    if isinstance(name, str):
        if name in SETTING_KEYS:
            return name
        if name in _TO_NEW_KEY:
            return str(_TO_NEW_KEY[name])
    raise ConfigError(
        f"Unknown Celery setting {name!r} in {source}."
        f"{_did_you_mean(str(name), SETTING_KEYS)} "
        f"The valid names are listed at {CELERY_SETTINGS_URL}"
    )


def _celery_dict(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    return {_celery_setting(name, source): value for name, value in values.items()}


# -- the result ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """The resolved configuration of one Flask app."""

    max_argument_bytes: int
    publish_timeout: float
    dev_worker: DevWorker
    embedded: bool
    """True when the broker is the embedded SQL transport (no remote control)."""
    embedded_path: str | None
    """The SQLite file of the embedded default, when that is what is used."""
    store_url: str
    """Where task records live (a Redis URL or an SQLAlchemy URL); also the result backend."""
    store_fallback: bool
    """True when records fell back to the instance folder's SQLite file (one host only)."""
    store_prefix: str
    store_options: dict[str, Any]
    """Extra arguments for the store (an SQLite lock timeout bounded by the publish one)."""
    retention: datetime.timedelta
    progress_interval: float
    worker_lost_timeout: float
    """Seconds without a heartbeat before a running task counts as lost."""
    url_prefix: str
    api: bool
    dashboard: bool
    schedule: dict[str, Any]
    """TASKS_SCHEDULE as given (checked and merged into beat_schedule by init_app)."""
    request_headers: tuple[str, ...]
    sse_max_per_client: int
    """Most event streams one client may hold open in one process (0: no limit)."""
    celery: dict[str, Any] = field(repr=False)
    """The complete Celery configuration to apply."""

    @property
    def broker_url(self) -> str:
        return str(self.celery["broker_url"])


def embedded_url(path: str) -> str:
    """The broker URL of the embedded SQLite file at ``path``."""
    return f"{EMBEDDED_SCHEME}+sqlite:///{os.path.abspath(path)}"


BASE_CELERY: dict[str, Any] = {
    "task_serializer": "json",
    "result_serializer": "json",
    "accept_content": ["json"],
    "result_accept_content": ["json"],
    "broker_connection_retry_on_startup": True,
}


SOFT_SHUTDOWN_TIMEOUT = 10.0
"""Default ``worker_soft_shutdown_timeout`` (seconds); see docs/reliability.md."""

_REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")
# A Redis connection's socket timeout must stay above the consumer's 1 s BRPOP wait.
_REDIS_MIN_SOCKET_TIMEOUT = 1.5


def _publish_settings(timeout: float, broker_url: str) -> dict[str, Any]:
    """Celery settings that bound how long one publish may try to reach the broker.

    Celery retries a failed publish under ``task_publish_retry_policy``; each try may wait
    for a connection (and, on Redis, for a reply). Up to three tries share the budget, so
    the total stays within ``timeout``.
    """
    redis = broker_url.startswith(_REDIS_SCHEMES)
    shortest_try = _REDIS_MIN_SOCKET_TIMEOUT if redis else 0.1
    tries = max(1, min(3, int(timeout // shortest_try)))
    per_try = max(timeout / tries, shortest_try if redis else 0.05)
    settings: dict[str, Any] = {
        "broker_connection_timeout": per_try,
        "task_publish_retry_policy": {
            "max_retries": tries - 1,
            "interval_start": 0,
            "interval_step": 0.05,
            "interval_max": 0.1,
        },
    }
    if redis:
        settings["broker_transport_options"] = {
            "socket_connect_timeout": per_try,
            "socket_timeout": per_try,
        }
    elif broker_url.startswith(EMBEDDED_SCHEME + "+"):
        # How long a write waits for SQLite's lock before it fails.
        settings["broker_transport_options"] = {"busy_timeout": int(per_try * 1000)}
    return settings


def _merge(base: dict[str, Any], layer: Mapping[str, Any]) -> None:
    """Apply ``layer`` over ``base``; transport option dicts merge key by key."""
    for key, value in layer.items():
        if key.endswith("_transport_options") and isinstance(value, Mapping):
            base[key] = {**base.get(key, {}), **value}
        else:
            base[key] = value


def resolve(config: Mapping[str, Any], *, instance_path: str) -> Settings:
    """Read a Flask config mapping into :class:`Settings`.

    Raises :class:`~flask_tasks.ConfigError` naming the first bad key.
    """
    own: dict[str, Any] = {}
    legacy: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str):
            continue
        if key.startswith("TASKS_"):
            setting = SETTINGS_BY_KEY.get(key)
            if setting is None:
                raise ConfigError(
                    f"Unknown configuration key {key!r}.{_did_you_mean(key, SETTINGS_BY_KEY)}"
                    f" flask-tasks reads: {', '.join(sorted(SETTINGS_BY_KEY))}."
                )
            own[key] = setting.check(key, value)
        elif key.startswith(_LEGACY_PREFIXES):
            name = LEGACY_NAMES.get(key)
            if name is None:
                raise ConfigError(
                    f"Unknown Celery setting {key!r} in the Flask config."
                    f"{_did_you_mean(key, LEGACY_NAMES)} Upper-case keys are read as "
                    f"'CELERY_' + the Celery setting name; see {CELERY_SETTINGS_URL}"
                )
            legacy[name] = value
    for setting in SETTINGS:
        own.setdefault(setting.key, setting.check(setting.key, setting.default))

    celery: dict[str, Any] = dict(BASE_CELERY)
    _merge(celery, legacy)
    _merge(celery, _celery_dict(_mapping("CELERY", config.get("CELERY")), "CELERY"))
    _merge(celery, _celery_dict(own["TASKS_CELERY"], "TASKS_CELERY"))
    if own["TASKS_BROKER_URL"] is not None:
        celery["broker_url"] = own["TASKS_BROKER_URL"]
    if own["TASKS_RESULT_BACKEND"] is not None:
        celery["result_backend"] = own["TASKS_RESULT_BACKEND"]

    _refuse_pickle(celery)

    embedded_path = None
    if not celery.get("broker_url"):
        embedded_path = os.path.abspath(os.path.join(instance_path, EMBEDDED_FILENAME))
        celery["broker_url"] = embedded_url(embedded_path)
    broker_url = str(celery["broker_url"])
    embedded = broker_url.startswith(EMBEDDED_SCHEME + "+")

    store_url = _store_url(own["TASKS_STORE_URL"], celery, config)
    store_fallback = store_url == ""
    if store_fallback:
        store_url = "sqlite:///" + os.path.abspath(os.path.join(instance_path, EMBEDDED_FILENAME))
    retention: datetime.timedelta = own["TASKS_RETENTION"]
    celery["result_backend"] = (
        f"{REDIS_BACKEND}+{store_url}"
        if store_url.startswith(REDIS_SCHEMES)
        else f"{SQL_BACKEND}+{store_url}"
    )

    defaults = _publish_settings(own["TASKS_PUBLISH_TIMEOUT"], broker_url)
    defaults.update(
        # Records for eager tasks and for tasks that ignore their result, too.
        task_store_eager_result=True,
        task_store_errors_even_if_ignored=True,
        result_expires=retention,
        # Keep a task's name and arguments with its result: the dashboard's retry needs
        # them. Never shown by the API.
        result_extended=True,
        # A cold shutdown (SIGQUIT, or SIGTERM with REMAP_SIGTERM=SIGQUIT) first lets
        # running tasks finish for this long; then idempotent ones go back to the queue.
        worker_soft_shutdown_timeout=SOFT_SHUTDOWN_TIMEOUT,
    )
    # Beat keeps its state next to the app, not in whatever directory it was started from.
    defaults["beat_schedule_filename"] = os.path.join(instance_path, "celerybeat-schedule")
    if embedded:
        defaults["worker_enable_remote_control"] = False
    for key, value in defaults.items():
        if key.endswith("_transport_options"):
            celery[key] = {**value, **celery.get(key, {})}
        else:
            celery.setdefault(key, value)

    return Settings(
        max_argument_bytes=own["TASKS_MAX_ARGUMENT_BYTES"],
        publish_timeout=own["TASKS_PUBLISH_TIMEOUT"],
        dev_worker=own["TASKS_DEV_WORKER"],
        embedded=embedded,
        embedded_path=embedded_path,
        store_url=store_url,
        store_fallback=store_fallback,
        store_prefix=own["TASKS_STORE_PREFIX"],
        store_options=_store_options(store_url, own["TASKS_PUBLISH_TIMEOUT"]),
        retention=retention,
        progress_interval=own["TASKS_PROGRESS_INTERVAL"],
        worker_lost_timeout=own["TASKS_WORKER_LOST_TIMEOUT"],
        url_prefix=own["TASKS_URL_PREFIX"],
        api=own["TASKS_API"],
        dashboard=own["TASKS_DASHBOARD"],
        schedule=own["TASKS_SCHEDULE"],
        request_headers=own["TASKS_REQUEST_HEADERS"],
        sse_max_per_client=own["TASKS_SSE_MAX_PER_CLIENT"],
        celery=celery,
    )


_PICKLE_NAMES = {"pickle", "application/x-python-serialize"}
_SERIALIZER_SETTINGS = ("task_serializer", "result_serializer", "event_serializer")
_ACCEPT_SETTINGS = ("accept_content", "result_accept_content", "event_accept_content")


def _refuse_pickle(celery: Mapping[str, Any]) -> None:
    """Pickle turns a message into code execution for anyone who can write to the broker
    (or the result backend): flask-tasks sends, accepts and stores JSON only."""
    for name in _SERIALIZER_SETTINGS:
        value = celery.get(name)
        if isinstance(value, str) and value.lower() in _PICKLE_NAMES:
            raise ConfigError(
                f"The Celery setting {name} = {value!r} is refused: a pickled message runs "
                "code for anyone who can write to the broker. flask-tasks sends JSON only; "
                "pass plain JSON data (ids, strings, numbers) and drop the setting."
            )
    for name in _ACCEPT_SETTINGS:
        value = celery.get(name)
        values = [value] if isinstance(value, str) else list(value or ())
        if any(isinstance(v, str) and v.lower() in _PICKLE_NAMES for v in values):
            raise ConfigError(
                f"The Celery setting {name} = {value!r} is refused: accepting pickle lets "
                "anyone who can write to the broker run code in your workers. Leave it "
                "['json'] (the default)."
            )


REDIS_BACKEND = "tasks-redis"
SQL_BACKEND = "tasks-sql"
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _store_url(explicit: str | None, celery: dict[str, Any], config: Mapping[str, Any]) -> str:
    """Where records live: the first of TASKS_STORE_URL, a Redis or database result
    backend, a Redis broker, the embedded file, Flask-SQLAlchemy's database; "" when none
    of these applies (the caller falls back to the instance folder's SQLite file)."""
    if explicit:
        return _plain_store_url(explicit, "TASKS_STORE_URL")
    backend = celery.get("result_backend")
    if backend:
        backend = str(backend)
        if backend.startswith(REDIS_SCHEMES):
            return backend
        for prefix in ("db+", REDIS_BACKEND + "+", SQL_BACKEND + "+"):
            if backend.startswith(prefix):
                return backend[len(prefix) :]
        raise ConfigError(
            f"The result backend {backend.split('://')[0] + '://'!r} cannot keep task "
            "records: flask-tasks' record store is the result backend, so it must be Redis "
            "(TASKS_RESULT_BACKEND = 'redis://...') or a database (TASKS_RESULT_BACKEND = "
            "'db+postgresql+psycopg://...'). Or set TASKS_STORE_URL and drop the setting."
        )
    broker = str(celery["broker_url"])
    if broker.startswith(REDIS_SCHEMES):
        return broker
    if broker.startswith(EMBEDDED_SCHEME + "+"):
        return broker[len(EMBEDDED_SCHEME) + 1 :]
    database = config.get("SQLALCHEMY_DATABASE_URI")
    if isinstance(database, str) and database:
        return database
    return ""


def _store_options(store_url: str, publish_timeout: float) -> dict[str, Any]:
    """A record write on the path of delay() waits no longer than a publish try may."""
    per_try = max(publish_timeout / 3, 0.1)
    if store_url.startswith(REDIS_SCHEMES):
        return {"socket_timeout": max(per_try, 0.25), "connect_timeout": per_try}
    if store_url.startswith("sqlite:"):
        return {"busy_timeout": int(per_try * 1000)}
    return {"connect_timeout": max(per_try, 1.0)}


def _plain_store_url(url: str, key: str) -> str:
    for prefix in ("db+", REDIS_BACKEND + "+", SQL_BACKEND + "+"):
        if url.startswith(prefix):
            return url[len(prefix) :]
    if "://" not in url:
        raise _bad(key, url, "a Redis or SQLAlchemy database URL", f'{key} = "redis://..."')
    return url
