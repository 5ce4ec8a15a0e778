"""The app the fault tests start workers of (tests/faults).

FT_BROKER / FT_QUEUE / FT_INSTANCE as in apps.factory; FAULTS_CONFIG is JSON merged into
the Flask config (TASKS_CELERY dicts merge); FAULTS_RUNS is a directory where each run of
a task appends its pid to a file named after the task's key.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from flask import Flask

from apps.brokers import config_from_env
from flask_tasks import Tasks

tasks = Tasks()


def _ran(key: str) -> None:
    runs = os.environ["FAULTS_RUNS"]
    with open(os.path.join(runs, key), "a") as f:
        f.write(f"{os.getpid()}\n")


@tasks.task(idempotent=True, max_retries=3, default_retry_delay=0)
def again(key: str, seconds: float) -> str:
    """Idempotent: may run again after a lost worker (at most max_retries + 1 times)."""
    _ran(key)
    time.sleep(seconds)
    return key


@tasks.task
def once(key: str, seconds: float) -> str:
    """Not idempotent: runs at most once."""
    _ran(key)
    time.sleep(seconds)
    return key


def merged_config() -> dict[str, Any]:
    config = config_from_env()
    extra = json.loads(os.environ.get("FAULTS_CONFIG") or "{}")
    celery = {**config.pop("TASKS_CELERY", {}), **extra.pop("TASKS_CELERY", {})}
    config.update(extra)
    config["TASKS_CELERY"] = celery
    return config


def create_app() -> Flask:
    app = Flask("faults_app", instance_path=os.environ.get("FT_INSTANCE"))
    app.config.update(merged_config())
    tasks.init_app(app)
    return app
