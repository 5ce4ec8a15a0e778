"""The quickstart's tasks: declared before any app exists."""

from __future__ import annotations

import time

from flask import current_app

from flask_tasks import Tasks

tasks = Tasks()


@tasks.task
def add_together(a: int, b: int) -> int:
    """The official Flask + Celery example's task."""
    return a + b


@tasks.task
def slow_count(seconds: int) -> dict[str, object]:
    """Something slow: count one per second, in the app context."""
    for _ in range(seconds):
        time.sleep(1)
    return {"counted": seconds, "app": current_app.name}
