"""``flask tasks ...``: run workers and beat for the app, including app factories."""

from __future__ import annotations

import datetime
import json
import os
import re
import sys
from typing import TYPE_CHECKING

import click
from flask import current_app
from flask.cli import AppGroup, ScriptInfo, pass_script_info

from .state import TaskRecord, TaskState, utcnow
from .store.base import CancelOutcome, RecordStore, StoreError

if TYPE_CHECKING:
    from flask import Flask

    from .extension import FlaskCelery

tasks_cli = AppGroup("tasks", help="Run and inspect the app's background tasks.")

_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []}


def _celery_of(app: Flask) -> FlaskCelery:
    state = app.extensions.get("tasks")
    if state is None:
        raise click.UsageError(
            "This app does not use flask-tasks: call 'tasks.init_app(app)' in its factory."
        )
    celery_app: FlaskCelery = state.celery
    return celery_app


def _run_celery(info: ScriptInfo, command: str, args: tuple[str, ...]) -> None:
    # No app context is pushed here on purpose: a worker gives each task its own.
    app = info.load_app()
    celery_app = _celery_of(app)
    code = celery_app.start([command, *args])
    if code:
        sys.exit(code)


@tasks_cli.command(
    "worker", context_settings=_PASS_THROUGH, with_appcontext=False, add_help_option=False
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_script_info
def worker_command(info: ScriptInfo, celery_args: tuple[str, ...]) -> None:
    """Start a Celery worker for this app (any 'celery worker' option passes through).

    Example: flask --app report tasks worker --concurrency 4 -Q mail,celery
    """
    _run_celery(info, "worker", celery_args)


@tasks_cli.command(
    "beat", context_settings=_PASS_THROUGH, with_appcontext=False, add_help_option=False
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@pass_script_info
def beat_command(info: ScriptInfo, celery_args: tuple[str, ...]) -> None:
    """Start Celery beat for this app (any 'celery beat' option passes through).

    It sends the periodic tasks of @tasks.periodic, TASKS_SCHEDULE and beat_schedule,
    while it holds the app's one-beat lock; without it, it stands by (see
    docs/periodic.md).
    """
    app = info.load_app()
    _prepare_beat(_celery_of(app))
    _run_celery(info, "beat", celery_args)


def _prepare_beat(celery_app: FlaskCelery) -> None:
    """Create the folders of beat's schedule and lock files; say when there is nothing to run."""
    os.makedirs(celery_app.flask_app.instance_path, exist_ok=True)
    directory = os.path.dirname(str(celery_app.conf.beat_schedule_filename or ""))
    if directory:
        os.makedirs(directory, exist_ok=True)
    if not celery_app.conf.beat_schedule:
        click.echo(
            "flask-tasks: this app has no periodic tasks yet (declare them with "
            "@tasks.periodic(...) or TASKS_SCHEDULE); beat waits for some.",
            err=True,
        )


# -- inspecting records -------------------------------------------------------------------


def _store() -> RecordStore:
    state = current_app.extensions.get("tasks")
    if state is None:
        raise click.UsageError(
            "This app does not use flask-tasks: call 'tasks.init_app(app)' in its factory."
        )
    store: RecordStore = state.store
    return store


def _percent(record: TaskRecord) -> str:
    progress = record.progress
    if progress is None or progress.percent is None:
        return "" if progress is None else f"{progress.current:g}"
    return f"{progress.percent:.0f}%"


def _when(value: datetime.datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value is not None else ""


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def _echo_record(record: TaskRecord) -> None:
    rows = [
        ("id", record.id),
        ("name", record.name),
        ("state", record.state.value + (" (cancel requested)" if record.cancel_requested else "")),
        ("owner", record.owner or ""),
        ("queue", record.queue or ""),
        ("attempt", str(record.attempt)),
        ("submitted", _when(record.submitted_at)),
        ("started", _when(record.started_at)),
        ("finished", _when(record.finished_at)),
    ]
    if record.progress is not None:
        p = record.progress
        total = f"/{p.total:g}" if p.total is not None else ""
        eta = f", eta {p.eta_seconds:g}s" if p.eta_seconds is not None else ""
        rows.append(("progress", f"{p.current:g}{total} {_percent(record)}{eta}".strip()))
        if p.message:
            rows.append(("message", p.message))
    if record.state is TaskState.SUCCEEDED:
        rows.append(("result", json.dumps(record.result, default=str)))
    if record.error is not None:
        rows.append(("error", f"{record.error.type}: {record.error.message}"))
    for key, value in rows:
        click.echo(f"{key:>10}  {value}")


def _get(task_id: str) -> TaskRecord:
    try:
        record = _store().get(task_id)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if record is None:
        raise click.ClickException(f"No task {task_id!r} (unknown, or its record expired).")
    return record


@tasks_cli.command("status")
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
def status_command(task_id: str, as_json: bool) -> None:
    """Show the record of one task."""
    record = _get(task_id)
    if as_json:
        _echo_json(record.to_dict(traceback=True))
    else:
        _echo_record(record)


@tasks_cli.command("list")
@click.option("--state", type=click.Choice([s.value for s in TaskState]), help="Only this state.")
@click.option("--name", help="Only tasks with this name.")
@click.option("--owner", help="Only tasks of this owner.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines, one per task.")
def list_command(
    state: str | None, name: str | None, owner: str | None, limit: int, as_json: bool
) -> None:
    """List tasks, newest first."""
    try:
        page = _store().list(
            owner=owner, state=TaskState(state) if state else None, name=name, limit=limit
        )
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for record in page.records:
            click.echo(json.dumps(record.to_dict(), default=str))
        return
    if not page.records:
        click.echo("No tasks.")
        return
    header = f"{'id':36}  {'state':9}  {'progress':>8}  {'submitted':19}  name"
    click.echo(header)
    for r in page.records:
        click.echo(
            f"{r.id:36}  {r.state.value:9}  {_percent(r):>8}  {_when(r.submitted_at):19}  {r.name}"
        )


@tasks_cli.command("cancel")
@click.argument("task_id")
@click.option(
    "--terminate",
    is_flag=True,
    help="Also stop a running task's process (not on the embedded broker).",
)
def cancel_command(task_id: str, terminate: bool) -> None:
    """Cancel a task: a queued one never starts, a running one stops at its next progress."""
    state = current_app.extensions["tasks"]
    try:
        outcome = state.extension.cancel(task_id, terminate=terminate)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    messages = {
        CancelOutcome.NOT_FOUND: f"No task {task_id!r}.",
        CancelOutcome.FINISHED: f"Task {task_id} already ended; nothing to cancel.",
        CancelOutcome.CANCELLED: f"Task {task_id} was queued: cancelled, it will not run.",
        CancelOutcome.REQUESTED: f"Task {task_id} is running: asked to stop.",
    }
    if outcome in (CancelOutcome.NOT_FOUND, CancelOutcome.FINISHED):
        raise click.ClickException(messages[outcome])
    click.echo(messages[outcome])


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(value: str) -> datetime.timedelta:
    match = _DURATION.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r}: use a number with s, m, h, d or w, e.g. 7d")
    return datetime.timedelta(seconds=float(match[1]) * _UNITS[match[2]])


@tasks_cli.command("purge")
@click.option(
    "--finished-before",
    "age",
    metavar="DURATION",
    help="Only tasks that finished longer ago than this (30m, 12h, 7d). Default: all "
    "finished tasks.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(age: str | None, yes: bool) -> None:
    """Delete the records of finished tasks (queued and running ones are kept)."""
    before = utcnow() - _duration(age) if age else None
    what = f"finished more than {age} ago" if age else "finished"
    if not yes:
        click.confirm(f"Delete the records of all tasks {what}?", abort=True)
    try:
        count = _store().purge(finished_before=before)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"Deleted {count} record{'s' if count != 1 else ''}.")
