"""Checked by mypy (tests/test_typing.py): tasks keep their function's signature.

Every ``# type: ignore[...]`` below marks an error mypy must report; with
``--warn-unused-ignores``, a line that stops being an error fails the check.
"""

from __future__ import annotations

from typing import Any, assert_type

from flask_tasks import Task, TaskResult, Tasks

tasks = Tasks()


@tasks.task
def build_report(report_id: int) -> dict[str, str]:
    return {"id": str(report_id)}


assert isinstance(build_report, Task)
assert_type(build_report.delay(42), TaskResult[dict[str, str]])
assert_type(build_report.delay(42).get(timeout=1), dict[str, str])
assert_type(build_report(42), dict[str, str])
assert_type(build_report.apply_async((42,), countdown=5), TaskResult[dict[str, str]])
build_report.delay("x")  # type: ignore[arg-type]
build_report.delay(1, 2)  # type: ignore[call-arg]
build_report.delay(report_ids=1)  # type: ignore[call-arg]
build_report("x")  # type: ignore[arg-type]


@tasks.task(queue="mail", retry_for=(OSError,), max_retries=5)
def send_mail(to: str, *, subject: str = "") -> None:
    pass


assert_type(send_mail.delay("a@example.com", subject="hi"), TaskResult[None])
send_mail.delay(1)  # type: ignore[arg-type]
send_mail.delay("a@example.com", "positional")  # type: ignore[call-arg]


@tasks.task(bind=True)
def bound(self: Any, n: int) -> int:
    return n


assert_type(bound.delay(1), TaskResult[int])
bound.delay("x")  # type: ignore[arg-type]
bound.delay()  # type: ignore[call-arg]
