"""A Flask-Executor app, ported to flask-tasks: a CSV export that used to run in the web
process's thread pool, and now runs as a Celery task with a record, progress and cancel.

    flask --app exports run
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

from flask import Flask, abort, current_app, render_template, request, send_from_directory, url_for

from flask_tasks import Tasks, TaskState, current_task, progress

tasks = Tasks()  # was: executor = Executor()

COLUMNS = {"en": ["order", "customer", "amount"], "fr": ["commande", "client", "montant"]}


def export_folder() -> str:
    return os.path.join(current_app.instance_path, "exports")


# was: @executor.job, which copied the whole request context into the thread. Here the
# task gets a request context rebuilt from the request that sent it: its path, method,
# query string, URL root and the headers in TASKS_REQUEST_HEADERS (Accept-Language).
@tasks.task(request_context=True)
def export_orders(customer: str, rows: int) -> dict[str, Any]:
    language = request.accept_languages.best_match(list(COLUMNS)) or "en"
    pause = current_app.config["EXPORT_ROW_SECONDS"]
    os.makedirs(export_folder(), exist_ok=True)
    path = os.path.join(export_folder(), f"{current_task.id}.csv")
    with open(path, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(COLUMNS[language])
        for i in range(rows):
            # Each report is also where a cancel is noticed: it raises TaskCancelled.
            progress(i, rows, message=f"row {i + 1} of {rows}")
            writer.writerow([1000 + i, customer, f"{(i * 37) % 100}.99"])
            time.sleep(pause)
    progress(rows, rows, message=f"{rows} rows")
    download = url_for("download", task_id=current_task.id, _external=True)
    return {"rows": rows, "language": language, "url": download}


def create_app(
    test_config: dict[str, Any] | None = None, instance_path: str | Path | None = None
) -> Flask:
    """``instance_path`` (default: $INSTANCE_PATH, else ./instance) holds the embedded
    queue, the task records and the exported files."""
    instance = instance_path or os.environ.get("INSTANCE_PATH")
    app = Flask(__name__, instance_path=os.path.abspath(instance) if instance else None)
    app.config.from_mapping(
        EXPORT_ROW_SECONDS=0.05,
        # was: EXECUTOR_MAX_WORKERS=2. The tasks run on a Celery worker: 'flask run' starts
        # one with this many threads on the embedded queue; 'flask tasks worker' reads it too.
        TASKS_CELERY={"worker_concurrency": 2},
    )
    app.config.from_prefixed_env()
    app.config.update(test_config or {})
    tasks.init_app(app)  # was: executor.init_app(app)

    @app.get("/")
    def index() -> str:
        return render_template("index.html")

    @app.post("/exports")
    def start_export() -> Any:
        customer = request.form.get("customer") or "ACME"
        rows = min(max(request.form.get("rows", 100, type=int), 1), 10_000)
        handle = export_orders.delay(customer, rows)  # was: export_orders.submit_stored(key, ...)
        # was: a status route reading executor.futures; the record is at /tasks/<id>.
        status = url_for("tasks.status", task_id=handle.id)
        return {"id": handle.id, "status": status}, 202, {"Location": status}

    @app.get("/exports/<task_id>.csv")
    def download(task_id: str) -> Any:
        record = tasks.get(task_id)
        if record is None or record.state is not TaskState.SUCCEEDED:
            abort(404)
        return send_from_directory(export_folder(), f"{task_id}.csv", as_attachment=True)

    return app
