"""Log records emitted inside a task carry its id and the id of the request that sent it."""

from __future__ import annotations

import logging
from typing import Any

from .progress import current_context

_installed = False


def install() -> None:
    """Give every log record ``task_id``, ``task_name`` and ``request_id`` (None outside a task).

    Use them in a format: ``"%(levelname)s [%(task_id)s %(request_id)s] %(message)s"``.
    Installed once per process, wrapping whatever record factory is in place.
    """
    global _installed
    if _installed:
        return
    _installed = True
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        ctx = current_context()
        record.task_id = ctx.id if ctx is not None else None
        record.task_name = ctx.name if ctx is not None else None
        record.request_id = ctx.request_id if ctx is not None else None
        return record

    logging.setLogRecordFactory(factory)
