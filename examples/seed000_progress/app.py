"""Seed 000, rebuilt: a long task with a progress bar and a JSON status page.

The old recipe built the Celery app by hand (``make_celery`` and a ``ContextTask`` that
pushed an app context), reported progress with ``update_state`` and answered ``PENDING``
for any id at all. Here ``Tasks`` does the wiring, ``progress()`` reports (and notices a
cancel), and ``/status/<id>`` keeps its JSON shape but answers 404 for an id it never saw.

    flask --app app run
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, current_app, jsonify, render_template, request, url_for

from flask_tasks import Tasks, TaskState, progress

STAGES = ["warming up", "reading the input", "crunching numbers", "writing the output"]


def instance_path() -> str | None:
    """INSTANCE_PATH=/some/dir keeps the queue and the task records out of ./instance."""
    path = os.environ.get("INSTANCE_PATH")
    return os.path.abspath(path) if path else None


app = Flask(__name__, instance_path=instance_path())
app.config["LONGTASK_STEP_SECONDS"] = 0.1  # 100 steps: about 10 s
# No broker configured: the embedded SQLite queue, worked by 'flask run' itself. The
# seed's own keys work as they were, e.g. from the environment for Redis:
#   FLASK_CELERY_BROKER_URL=redis://127.0.0.1:6379/0
#   FLASK_CELERY_RESULT_BACKEND=redis://127.0.0.1:6379/0
app.config.from_prefixed_env()
tasks = Tasks(app)


@tasks.task
def long_task(total: int = 100) -> dict[str, Any]:
    """Work through ``total`` steps, saying how far it is after each one."""
    delay = current_app.config["LONGTASK_STEP_SECONDS"]
    for i in range(total):
        stage = STAGES[i * len(STAGES) // total]
        progress(i, total, message=f"{stage} ({i}/{total})")  # raises TaskCancelled if cancelled
        time.sleep(delay)
    progress(total, total, message="all done")
    return {"current": total, "total": total, "status": "all done", "result": 42}


@app.get("/")
def index() -> str:
    return render_template("index.html")


@app.post("/longtask")
def longtask() -> Any:
    total = min(max(request.form.get("total", 100, type=int), 1), 1000)
    handle = long_task.delay(total)
    status_url = url_for("taskstatus", task_id=handle.id)
    return jsonify(task_id=handle.id), 202, {"Location": status_url}


@app.get("/status/<task_id>")
def taskstatus(task_id: str) -> Any:
    """The seed's JSON shape (state, current, total, status), read from the task's record."""
    record = tasks.get(task_id)
    if record is None:  # never sent, or expired: not a PENDING task that never ends
        return jsonify(error=f"no task {task_id}"), 404
    done = record.progress.to_dict() if record.progress else {}
    response: dict[str, Any] = {
        "state": record.state.value,  # queued, running, succeeded, failed, cancelled
        "current": done.get("current") or 0,
        "total": done.get("total") or 100,
        "status": done.get("message") or record.state.value,
    }
    if record.state is TaskState.SUCCEEDED:
        response["result"] = record.result["result"]
    elif record.state is TaskState.FAILED and record.error is not None:
        response["status"] = f"{record.error.type}: {record.error.message}"
    return jsonify(response)
