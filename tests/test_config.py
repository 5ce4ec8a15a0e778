from __future__ import annotations

import os
from typing import Any

import pytest
from flask import Flask

from flask_tasks import ConfigError, Tasks
from flask_tasks.config import SETTINGS, resolve


def settings(**config: Any) -> Any:
    return resolve(config, instance_path="/srv/app/instance")


def test_embedded_default_when_no_broker_is_configured() -> None:
    s = settings()
    assert s.embedded
    assert s.embedded_path == "/srv/app/instance/tasks.sqlite3"
    assert s.celery["broker_url"] == "tasksdb+sqlite:////srv/app/instance/tasks.sqlite3"
    assert s.store_url == "sqlite:////srv/app/instance/tasks.sqlite3"
    assert s.celery["result_backend"] == "tasks-sql+sqlite:////srv/app/instance/tasks.sqlite3"
    assert s.celery["worker_enable_remote_control"] is False
    assert s.celery["broker_transport_options"]["busy_timeout"] > 0


def test_json_only_by_default() -> None:
    s = settings(TASKS_BROKER_URL="redis://x")
    assert s.celery["task_serializer"] == "json"
    assert s.celery["accept_content"] == ["json"]
    assert s.celery["result_accept_content"] == ["json"]


def test_precedence_tasks_then_celery_dict_then_legacy() -> None:
    s = settings(
        TASKS_BROKER_URL="redis://tasks",
        CELERY={"broker_url": "redis://dict", "result_backend": "redis://dict"},
        CELERY_BROKER_URL="redis://legacy",
        CELERY_RESULT_BACKEND="redis://legacy",
        CELERY_TASK_ALWAYS_EAGER=True,
    )
    assert s.celery["broker_url"] == "redis://tasks"
    assert s.store_url == "redis://dict"
    assert s.celery["result_backend"] == "tasks-redis+redis://dict"
    assert s.celery["task_always_eager"] is True
    assert not s.embedded


def test_tasks_celery_overrides_celery_dict() -> None:
    s = settings(
        CELERY={"task_default_queue": "a", "task_time_limit": 5},
        TASKS_CELERY={"task_default_queue": "b"},
    )
    assert s.celery["task_default_queue"] == "b"
    assert s.celery["task_time_limit"] == 5


def test_legacy_keys_from_seeds() -> None:
    # seed 000 and seed 002 style configuration
    s = settings(
        CELERY_BROKER_URL="amqp://guest:guest@127.0.0.1:5672//",
        CELERY_TASK_ALWAYS_EAGER=False,
        CELERY_TASK_EAGER_PROPAGATES_EXCEPTIONS=True,
        CELERY_ALWAYS_EAGER=False,  # Celery 3 name
        CELERYD_CONCURRENCY=3,
    )
    assert s.celery["broker_url"].startswith("amqp://")
    assert s.celery["task_eager_propagates"] is True
    assert s.celery["task_always_eager"] is False
    assert s.celery["worker_concurrency"] == 3


def test_misspelled_tasks_key_names_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'TASKS_BROKER_ULR'.*Did you mean 'TASKS_BROKER_URL'"):
        settings(TASKS_BROKER_ULR="redis://x")


def test_unknown_celery_setting_in_dict_names_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'task_always_eagr' in CELERY.*'task_always_eager'"):
        settings(CELERY={"task_always_eagr": True})
    with pytest.raises(ConfigError, match=r"'broker_ulr' in TASKS_CELERY.*'broker_url'"):
        settings(TASKS_CELERY={"broker_ulr": "x"})


def test_unknown_legacy_key_names_the_closest() -> None:
    with pytest.raises(ConfigError, match=r"'CELERY_BROKER_ULR'.*'CELERY_BROKER_URL'"):
        settings(CELERY_BROKER_ULR="redis://x")


@pytest.mark.parametrize(
    ("key", "value", "fix"),
    [
        ("TASKS_PUBLISH_TIMEOUT", "soon", "TASKS_PUBLISH_TIMEOUT = 5"),
        ("TASKS_PUBLISH_TIMEOUT", -1, "number of seconds greater than 0"),
        ("TASKS_MAX_ARGUMENT_BYTES", 0, "whole number greater than 0"),
        ("TASKS_MAX_ARGUMENT_BYTES", True, "whole number"),
        ("TASKS_DEV_WORKER", "sometimes", '"auto", True or False'),
        ("TASKS_BROKER_URL", 6379, "a URL string"),
        ("TASKS_CELERY", "task_time_limit=5", "a dict of Celery settings"),
        ("CELERY", ["broker_url"], "a dict of Celery settings"),
        ("TASKS_RETENTION", "a week", "a duration"),
        ("TASKS_RETENTION", -5, "a duration"),
        ("TASKS_PROGRESS_INTERVAL", -1, "number of seconds"),
        ("TASKS_URL_PREFIX", "tasks", "a URL path starting with '/'"),
        ("TASKS_API", "maybe", "True or False"),
        ("TASKS_STORE_PREFIX", "my-app", "letters, digits and underscores"),
        ("TASKS_STORE_URL", "somewhere", "a Redis or SQLAlchemy database URL"),
    ],
)
def test_bad_values_name_the_key_and_the_fix(key: str, value: Any, fix: str) -> None:
    with pytest.raises(ConfigError) as info:
        settings(**{key: value})
    assert key in str(info.value)
    assert fix in str(info.value)


def test_values_as_strings_from_the_environment_are_accepted() -> None:
    s = settings(
        TASKS_PUBLISH_TIMEOUT="2.5", TASKS_MAX_ARGUMENT_BYTES="2048", TASKS_DEV_WORKER="false"
    )
    assert (s.publish_timeout, s.max_argument_bytes, s.dev_worker) == (2.5, 2048, False)


def test_from_prefixed_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("FLASK_TASKS_BROKER_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("FLASK_TASKS_PUBLISH_TIMEOUT", "2")
    monkeypatch.setenv("FLASK_TASKS_CELERY__task_default_queue", "mail")
    app = Flask("envapp", instance_path=str(tmp_path))
    app.config.from_prefixed_env()
    Tasks(app)
    celery_app = app.extensions["celery"]
    assert celery_app.conf.broker_url == "redis://127.0.0.1:6379/3"
    assert celery_app.conf.task_default_queue == "mail"
    assert app.extensions["tasks"].settings.publish_timeout == 2.0


@pytest.mark.parametrize(
    ("config", "store"),
    [
        ({"TASKS_BROKER_URL": "redis://r/1"}, "redis://r/1"),
        (
            {"TASKS_BROKER_URL": "redis://r/1", "TASKS_RESULT_BACKEND": "redis://s/2"},
            "redis://s/2",
        ),
        (
            {"TASKS_BROKER_URL": "amqp://q", "TASKS_RESULT_BACKEND": "db+postgresql://p/db"},
            "postgresql://p/db",
        ),
        (
            {"TASKS_BROKER_URL": "amqp://q", "SQLALCHEMY_DATABASE_URI": "sqlite:///x.db"},
            "sqlite:///x.db",
        ),
        (
            {"TASKS_BROKER_URL": "redis://r/1", "TASKS_STORE_URL": "postgresql+psycopg://p/db"},
            "postgresql+psycopg://p/db",
        ),
        ({"TASKS_BROKER_URL": "tasksdb+sqlite:////data/q.db"}, "sqlite:////data/q.db"),
    ],
)
def test_the_record_store_is_chosen_from_the_config(config: dict[str, Any], store: str) -> None:
    s = settings(**config)
    assert s.store_url == store
    scheme = "tasks-redis" if store.startswith("redis") else "tasks-sql"
    assert s.celery["result_backend"] == f"{scheme}+{store}"


def test_a_broker_that_cannot_keep_records_falls_back_to_the_instance_folder() -> None:
    s = settings(TASKS_BROKER_URL="amqp://guest@q//")
    assert s.store_fallback
    assert s.store_url == "sqlite:////srv/app/instance/tasks.sqlite3"
    assert not settings(TASKS_BROKER_URL="redis://r").store_fallback


def test_a_result_backend_that_cannot_keep_records_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"rpc://.*cannot keep task records"):
        settings(TASKS_BROKER_URL="amqp://guest@q//", TASKS_RESULT_BACKEND="rpc://")


def test_record_settings() -> None:
    import datetime

    s = settings(TASKS_RETENTION=3600, TASKS_PROGRESS_INTERVAL=0, TASKS_URL_PREFIX="/api/jobs/")
    assert s.retention == datetime.timedelta(hours=1)
    assert s.celery["result_expires"] == datetime.timedelta(hours=1)
    assert s.progress_interval == 0
    assert s.url_prefix == "/api/jobs"
    assert s.celery["task_store_eager_result"] is True


def test_publish_timeout_bounds_connection_attempts() -> None:
    s = settings(TASKS_BROKER_URL="redis://x", TASKS_PUBLISH_TIMEOUT=3)
    policy = s.celery["task_publish_retry_policy"]
    per_try = s.celery["broker_connection_timeout"]
    opts = s.celery["broker_transport_options"]
    assert opts["socket_connect_timeout"] == per_try
    assert per_try * (policy["max_retries"] + 1) + policy["interval_max"] * 2 <= 3.5


def test_user_transport_options_merge_over_ours() -> None:
    s = settings(TASKS_CELERY={"broker_transport_options": {"polling_interval": 0.5}})
    assert s.celery["broker_transport_options"]["polling_interval"] == 0.5
    assert s.celery["broker_transport_options"]["busy_timeout"] > 0


def test_every_key_is_documented_in_one_table() -> None:
    path = os.path.join(os.path.dirname(__file__), "..", "docs", "configuration.md")
    with open(path, encoding="utf-8") as f:
        rows = [line for line in f if line.startswith("| `TASKS_")]
    documented = {row.split("`")[1] for row in rows}
    assert documented == {s.key for s in SETTINGS}
