"""The official pattern's task, as it was, and a periodic task declared with flask-tasks."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from flask_tasks import TaskState

from .extensions import tasks


@shared_task(ignore_result=False)
def add_together(a: int, b: int) -> int:
    return a + b


@tasks.task(ignore_result=False)  # the app ignores results by default (CELERY above)
def tally() -> dict[str, Any]:
    """Sum up the latest additions (run every minute by beat: see TASKS_SCHEDULE).

    A small report built from the task records: each addition has one, and so does each
    run of this task, which the page shows.
    """
    page = tasks.store.list(name=add_together.name, limit=100)
    done = [record for record in page.records if record.state is TaskState.SUCCEEDED]
    return {"additions": len(done), "sum": sum(record.result or 0 for record in done)}
