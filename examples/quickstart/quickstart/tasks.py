"""The quickstart's tasks: declared before any app exists."""

from __future__ import annotations

import time

from flask import current_app

from flask_tasks import Tasks, progress

tasks = Tasks()


@tasks.task
def add_together(a: int, b: int) -> int:
    """The official Flask + Celery example's task."""
    return a + b


@tasks.task
def slow_count(seconds: int) -> dict[str, object]:
    """Something slow: count one per second, in the app context, saying how far it is.

    ``progress()`` is what the page's bar shows; it also stops the task when Cancel is
    clicked (it raises ``TaskCancelled``).
    """
    for i in range(seconds):
        progress(i, seconds, message=f"counting: {i} of {seconds}")
        time.sleep(1)
    progress(seconds, seconds, message=f"counted to {seconds}")
    return {"counted": seconds, "app": current_app.name}
