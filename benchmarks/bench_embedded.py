"""flask-tasks on its embedded default (SQLite queue and records), end to end.

Run from the repository root::

    .venv/bin/python benchmarks/bench_embedded.py [--round-trips 100] [--drain 500]

One ``flask tasks worker`` (prefork, one pool process by default) on a fresh
instance folder, no Redis anywhere:

* round trip: ``delay()`` of a no-op task until its record is ``succeeded``, sequential,
  the record polled every 2 ms; p50 and p95;
* drain: tasks queued with the worker stopped, then one worker started; tasks/s from the
  worker's "ready" until every record is final;
* rows left in ``kombu_message`` afterwards (acked messages are deleted).

``benchmarks/bench_transport.py`` compares the transport itself with Kombu's stock one.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flask import Flask

from flask_tasks import Tasks, TaskState

tasks = Tasks()


@tasks.task
def noop() -> None:
    return None


def create_app() -> Flask:
    app = Flask("bench_embedded", instance_path=os.environ["BENCH_INSTANCE"])
    app.config["TASKS_DEV_WORKER"] = False
    tasks.init_app(app)
    return app


def _worker(env: dict[str, str], log: Path, concurrency: int) -> subprocess.Popen[bytes]:
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "bench_embedded:create_app", "tasks",
             "worker", "--pool", "prefork", "-c", str(concurrency), "-l", "info"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while "ready." not in log.read_text():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return worker


def _wait_final(app: Flask, ids: list[str], timeout: float = 600) -> None:
    store = app.extensions["tasks"].store
    deadline = time.monotonic() + timeout
    pending = list(ids)
    while pending:
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(pending)} tasks did not finish")
        pending = [i for i in pending if not (r := store.get(i)) or not r.finished]
        if pending:
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--round-trips", type=int, default=100)
    parser.add_argument("--drain", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=1)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-embedded-"))
    os.environ["BENCH_INSTANCE"] = str(folder / "instance")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    app = create_app()
    store = app.extensions["tasks"].store
    log = folder / "worker.log"

    worker = _worker(env, log, options.concurrency)
    try:
        times = []
        with app.app_context():
            for _ in range(options.round_trips + 5):
                started = time.perf_counter()
                task_id = noop.delay().id
                while True:
                    record = store.get(task_id)
                    if record is not None and record.state is TaskState.SUCCEEDED:
                        break
                    time.sleep(0.002)
                times.append(time.perf_counter() - started)
        times = sorted(times[5:])  # the first few warm the worker up
    finally:
        worker.terminate()
        worker.wait(60)

    with app.app_context():
        ids = [noop.delay().id for _ in range(options.drain)]
    worker = _worker(env, log, options.concurrency)
    try:
        started = time.perf_counter()
        _wait_final(app, ids)
        drain = options.drain / (time.perf_counter() - started)
    finally:
        worker.terminate()
        worker.wait(60)
    with sqlite3.connect(folder / "instance" / "tasks.sqlite3") as db:
        left = db.execute("select count(*) from kombu_message").fetchone()[0]

    p50 = statistics.median(times) * 1000
    p95 = times[int(len(times) * 0.95)] * 1000
    print(
        f"flask-tasks embedded default, one worker (prefork -c {options.concurrency}), "
        f"Python {sys.version.split()[0]}"
    )
    print(
        f"  round trip delay() -> succeeded: p50 {p50:.1f} ms, p95 {p95:.1f} ms (goal p50 <= 30)"
    )
    print(f"  drain of {options.drain} queued no-op tasks: {drain:.0f} tasks/s (goal >= 200)")
    print(f"  rows left in kombu_message: {left}")


if __name__ == "__main__":
    main()  # task names use "bench_embedded", as the worker, which imports this file
