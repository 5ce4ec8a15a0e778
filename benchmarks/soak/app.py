"""The app the soak runs: one task that reports progress, on Redis or the embedded default.

Configured from the environment, so that the driver, gunicorn and the workers build the
same app: ``SOAK_BROKER`` (``redis`` or ``embedded``), ``SOAK_REDIS_URL``, ``SOAK_PREFIX``
(the record store's prefix, and the queue's name), ``SOAK_INSTANCE`` (the instance folder
holding the embedded SQLite file) and ``SOAK_PROGRESS_INTERVAL``.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask

from flask_tasks import Tasks, progress

tasks = Tasks()


@tasks.task
def soak_task(number: int, steps: int, step_seconds: float) -> int:
    """Work in ``steps`` steps, reporting progress after each one."""
    for step in range(1, steps + 1):
        time.sleep(step_seconds)
        progress(step, steps, message=f"step {step} of {steps}")
    return number


def config_from_env() -> dict[str, Any]:
    prefix = os.environ["SOAK_PREFIX"]
    config: dict[str, Any] = {
        "TASKS_DEV_WORKER": False,
        "TASKS_STORE_PREFIX": prefix,
        "TASKS_PROGRESS_INTERVAL": float(os.environ.get("SOAK_PROGRESS_INTERVAL", "0")),
    }
    if os.environ.get("SOAK_BROKER", "redis") == "redis":
        url = os.environ["SOAK_REDIS_URL"]
        config.update(
            TASKS_BROKER_URL=url,
            TASKS_RESULT_BACKEND=url,
            TASKS_CELERY={"task_default_queue": prefix},
        )
    return config


def create_app() -> Flask:
    app = Flask(__name__, instance_path=os.environ.get("SOAK_INSTANCE"))
    app.config.update(config_from_env())
    tasks.init_app(app)
    return app
