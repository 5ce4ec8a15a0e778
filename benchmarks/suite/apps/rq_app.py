"""pallets-eco's Flask-RQ (RQ), Redis.

As its docs show: ``rq = RQ()``, ``rq.init_app(app)``, ``RQ_CONNECTION`` in the config,
job functions decorated with ``@rq.job`` and sent with ``.enqueue()``. It has no status
route: this one is RQ's docs' (fetch the job, ``get_status()``, ``return_value()``).
Progress is RQ's documented way: ``job.meta[...] = ...; job.save_meta()``.

Two workers, two processes each started on its own:

* default: ``flask rq worker`` (Flask-RQ 1.0 runs every job in a new ``flask rq
  work-horse`` subprocess, where plain RQ would fork);
* tuned: the "worker script" of Flask-RQ's docs (an app context around a worker made in
  code), with RQ's ``SimpleWorker``, which runs jobs in the worker process itself:
  :func:`run_simple_worker`.

Both keep results 1 h (``--results-ttl 3600``; RQ's default is 500 s) so that the status
workload, run after the drains, still finds the jobs; it does not change what a job costs.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_rq import RQ
from rq import get_current_job
from rq.worker import SimpleWorker

from ._common import REDIS_URL, RESULT_TTL_SECONDS, progress_loop

rq = RQ()


@rq.job
def noop() -> None:
    return None


@rq.job
def progress_task(n: int, token: str, report: bool) -> float:
    job = get_current_job()

    def save(i: int, total: int) -> None:
        assert job is not None
        job.meta["progress"] = {"current": i, "total": total}
        job.save_meta()

    return progress_loop(n, token, save if report else None)


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["RQ_CONNECTION"] = REDIS_URL
    rq.init_app(app)

    @app.post("/submit")
    def submit() -> tuple[dict[str, str], int]:
        return {"id": noop.enqueue().id}, 202

    @app.get("/jobs/<job_id>")
    def job_status(job_id: str) -> Any:
        job = rq.queue.fetch_job(job_id)
        if job is None:
            return {"error": "not found"}, 404
        status = job.get_status()
        return {
            "id": job.id,
            "status": status,
            "result": job.return_value() if status == "finished" else None,
        }

    return app


def run_simple_worker() -> None:
    """The tuned worker: Flask-RQ's worker script, with RQ's SimpleWorker (no subprocess)."""
    app = create_app()
    with app.app_context():
        queues = list(rq.queues.values())
        worker = SimpleWorker(
            queues,
            connection=queues[0].connection,
            job_class=queues[0].job_class,
            default_result_ttl=RESULT_TTL_SECONDS,
        )
        worker.work()


# -- the driver's side --------------------------------------------------------------------


def enqueue(app: Flask, n: int) -> list[str]:
    with app.app_context():
        return [noop.enqueue().id for _ in range(n)]


def finished(app: Flask, ids: list[str]) -> int:
    """Jobs of ``ids`` with a result (RQ writes ``rq:results:<id>`` when a job ends).

    Not the finished-job registry's size: RQ trims it as older entries expire, which
    would make a count taken before the drain too high.
    """
    with app.app_context():
        client = rq.queue.connection
    keys = [f"rq:results:{i}" for i in ids]
    return sum(int(client.exists(*keys[i : i + 1000])) for i in range(0, len(keys), 1000))


def purge(app: Flask) -> None:
    with app.app_context():
        rq.queue.empty()


def start_progress(app: Flask, n: int, token: str, report: bool) -> str:
    with app.app_context():
        return str(progress_task.enqueue(n, token, report).id)
