"""The deploy task: one progress report per step, cancellable between steps."""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import current_app, request

from flask_tasks import TaskCancelled, progress

from . import tasks

log = logging.getLogger(__name__)

STEPS = [
    "checking the server",
    "uploading the release",
    "installing dependencies",
    "migrating the database",
    "switching traffic",
    "running the health check",
]


# request_context=True: the task runs in a request context rebuilt from the request that
# sent it (path, method, query string, URL root and TASKS_REQUEST_HEADERS), which is what
# Flask-CeleryExt's RequestContextTask gave. The body, session and g do not travel.
@tasks.task(request_context=True)
def deploy(server: str, version: str) -> dict[str, Any]:
    operator = request.headers.get("X-Operator", "someone")
    log.info(
        "%s asked for %s on %s (%s %s)", operator, version, server, request.method, request.path
    )
    pause = current_app.config["DEPLOY_STEP_SECONDS"]
    done = 0
    try:
        for step in STEPS:
            # Each report is also where a cancel is noticed: it raises TaskCancelled.
            progress(done, len(STEPS), message=f"{server}: {step}")
            time.sleep(pause)
            done += 1
        progress(done, len(STEPS), message=f"{server} runs {version}")
    except TaskCancelled:
        log.warning(
            "deploy of %s to %s cancelled after %d of %d steps", version, server, done, len(STEPS)
        )
        raise
    return {
        "server": server,
        "version": version,
        "operator": operator,
        "requested": f"{request.method} {request.full_path.rstrip('?')}",
        "language": request.accept_languages.best,
    }
