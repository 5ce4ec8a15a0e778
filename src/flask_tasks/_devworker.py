"""The in-process development worker that ``flask run`` starts on the embedded broker."""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

import click
from flask.helpers import get_debug_flag
from kombu.utils.url import maybe_sanitize_url
from werkzeug.serving import is_running_from_reloader

from ._worker import InProcessWorker
from .periodic import EmbeddedBeat, takes_the_lock

if TYPE_CHECKING:
    from flask import Flask

    from .extension import FlaskCelery

logger = logging.getLogger("flask_tasks")

DEV_CONCURRENCY = 4


def _flask_run_context() -> click.Context | None:
    ctx = click.get_current_context(silent=True)
    while ctx is not None:
        if ctx.command.name == "run" and "reload" in ctx.params:
            return ctx
        ctx = ctx.parent
    return None


def _reloader_parent(ctx: click.Context) -> bool:
    """True in the process that only watches files for ``flask run``'s reloader."""
    reload = ctx.params.get("reload")
    if reload is None:
        reload = get_debug_flag()
    return bool(reload) and not is_running_from_reloader()


class DevWorker(InProcessWorker):
    """The development worker: a thread pool worker in a daemon thread of the server.

    It also runs beat for the app's periodic tasks, in a thread of its own
    (:class:`~flask_tasks.periodic.EmbeddedBeat`): under the app's one-beat lock, so
    several processes with a dev worker (a multi-process server, ``flask tasks beat``
    beside ``flask run``) never send a periodic task twice. An app whose
    ``beat_scheduler`` takes no such lock gets no beat here.
    """

    def __init__(
        self, celery_app: FlaskCelery, announce: Callable[[bool, str], None] | None = None
    ) -> None:
        concurrency = celery_app.conf.worker_concurrency or DEV_CONCURRENCY
        super().__init__(celery_app, pool="threads", concurrency=concurrency, name="dev")
        settings = celery_app.tasks_settings
        self.description = f"flask-tasks: development worker running {concurrency} threads on " + (
            settings.embedded_path or maybe_sanitize_url(celery_app.conf.broker_url)
        )
        self.beat: EmbeddedBeat | None = None
        if takes_the_lock(celery_app):
            self.beat = EmbeddedBeat(celery_app, announce=announce)
        else:
            logger.info(
                "flask-tasks: the development worker runs no beat: the beat_scheduler %r "
                "takes no one-beat lock. Run 'flask tasks beat' for periodic tasks.",
                celery_app.conf.beat_scheduler,
            )

    def start(self, ready_timeout: float | None = None) -> None:
        super().start(ready_timeout)
        if self.beat is not None:
            self.beat.start()
        atexit.register(self.stop)

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop beat (saving its schedule, releasing its lock), then the worker."""
        if self.beat is not None:
            self.beat.stop()
        return super().stop(timeout)


_started: dict[int, DevWorker] = {}
_lock = threading.Lock()


def start_dev_worker(
    celery_app: FlaskCelery, announce: Callable[[bool, str], None] | None = None
) -> DevWorker:
    """Start the development worker of ``celery_app`` once per process.

    ``announce(active, message)`` is told when its beat starts sending or stands by
    (by default that is logged).
    """
    with _lock:
        worker = _started.get(id(celery_app))
        if worker is None:
            worker = DevWorker(celery_app, announce=announce)
            worker.start()
            _started[id(celery_app)] = worker
            logger.info(worker.description)
    return worker


def _echo_beat(active: bool, message: str) -> None:
    """Under ``flask run``, say what the dev worker's beat does, beside the server's lines."""
    click.echo(f" * {message}", err=True)


def setup_dev_worker(app: Flask, celery_app: FlaskCelery) -> None:
    """Decide, from ``TASKS_DEV_WORKER``, whether and when this process runs a dev worker.

    ``auto``: under ``flask run`` with the embedded broker, in the serving process (never
    in the reloader's watcher process). ``True``: the same under ``flask run``; elsewhere
    (``python app.py``, another server) when the first request arrives, so a reloader's
    watcher, which serves none, never starts one. ``False``: never.
    """
    settings = celery_app.tasks_settings
    mode = settings.dev_worker
    if mode is False or celery_app.conf.task_always_eager:
        return
    run_ctx = _flask_run_context()
    if run_ctx is not None:
        if mode == "auto" and not settings.embedded:
            return
        if not _reloader_parent(run_ctx):
            worker = start_dev_worker(celery_app, announce=_echo_beat)
            click.echo(f" * {worker.description}", err=True)
        return
    if mode is True:
        started = threading.Event()

        @app.before_request
        def _start_dev_worker_once() -> None:
            if not started.is_set():
                started.set()
                start_dev_worker(celery_app)
