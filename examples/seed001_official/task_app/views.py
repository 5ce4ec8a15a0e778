"""The official pattern's two routes, unchanged, and one that shows the periodic task."""

from __future__ import annotations

from celery.result import AsyncResult
from flask import Blueprint, request

from .extensions import tasks
from .tasks import add_together, tally

# Flask's own example repository names its blueprint "tasks": that name is flask-tasks'
# API blueprint (/tasks/<id>), so this one has another name.
bp = Blueprint("calc", __name__)


@bp.post("/add")
def start_add() -> dict[str, object]:
    a = request.form.get("a", type=int)
    b = request.form.get("b", type=int)
    result = add_together.delay(a, b)
    return {"result_id": result.id}


@bp.get("/result/<id>")
def task_result(id: str) -> dict[str, object]:
    result = AsyncResult(id)
    return {
        "ready": result.ready(),
        "successful": result.successful(),
        "value": result.result if result.ready() else None,
    }


@bp.get("/tally")
def last_tally() -> dict[str, object]:
    """The newest run of the periodic task, from its record: beat sent it, a worker ran it."""
    page = tasks.store.list(name=tally.name, limit=1)
    if not page.records:
        return {"runs": None}
    record = page.records[0]
    return {
        "id": record.id,
        "state": record.state.value,
        "finished_at": record.finished_at.isoformat() if record.finished_at else None,
        "result": record.result,
    }
