"""Tasks, declared at import time: no Flask app and no Celery app exist yet."""

from __future__ import annotations

import logging
from typing import Any

from flask import current_app

from flask_tasks import Tasks, current_task

tasks = Tasks()
log = logging.getLogger(__name__)


@tasks.task
def my_add(x: int, y: int) -> dict[str, Any]:
    # The task runs in an app context of the app that sent it: current_app is that app.
    value = current_app.config["TEST_FOR_APP_CONTEXT"]
    log.warning("%s + %s = %s", x, y, x + y)
    log.warning("TEST_FOR_APP_CONTEXT = %r (task %s)", value, current_task.id)
    return {"sum": x + y, "TEST_FOR_APP_CONTEXT": value, "app": current_app.name}
