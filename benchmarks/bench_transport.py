"""Kombu's stock SQLAlchemy transport vs flask-tasks' ``tasksdb`` transport, on SQLite.

Run from the repository root::

    .venv/bin/python benchmarks/bench_transport.py [--round-trips 100] [--drain 500]
        [--pool prefork|solo] [--concurrency 1]

For each transport, in a fresh SQLite file that also holds Celery's database result
backend (``db+sqlite:///`` on the same file), with one ``celery worker`` subprocess, by
default ``--pool=prefork --concurrency=1``: one pool process executes the tasks while the
main process talks to the broker.  (With ``--pool=solo`` Celery's database backend builds
a new engine for every result it stores, because it only caches engines in forked pool
processes; that, not the broker, then caps the drain at about 200 tasks/s.)

(a) round trip of a no-op task, submit -> result, over sequential tasks (p50, p95);
    results are polled with ``AsyncResult.get(interval=0.005)`` so result polling adds
    at most ~5 ms and is not the bottleneck;
(b) drain throughput: tasks are queued with no worker running, then one worker starts;
    tasks/s = (N - 1) / (last ``date_done`` - first ``date_done``), Celery's own
    timestamps of the results, so worker start-up is not counted;
(c) rows left in ``kombu_message`` once the drain is done.

This file is also the Celery app module of the worker subprocesses (configured from
environment variables), so it needs nothing else to run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import worker_ready
from kombu import Connection

import flask_tasks.transport  # registers tasksdb+

# -- the worker side ------------------------------------------------------------------------

app = Celery("bench_transport")
if "BENCH_BROKER" in os.environ:
    app.conf.update(
        broker_url=os.environ["BENCH_BROKER"],
        result_backend=os.environ["BENCH_BACKEND"],
        broker_transport_options=json.loads(os.environ.get("BENCH_OPTIONS", "{}")),
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
    )


@worker_ready.connect
def _ready(**kwargs: Any) -> None:
    Path(os.environ["BENCH_READY"]).touch()


@app.task(name="bench.noop")
def noop() -> None:
    return None


# -- the driver -----------------------------------------------------------------------------


@dataclass
class Outcome:
    label: str
    options: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    drain_rate: float = float("nan")
    rows_left: int = -1
    publish_rate: float = float("nan")


def declare(url: str, options: dict[str, Any]) -> None:
    """Create the tables and the ``celery`` queue before any worker starts."""
    with Connection(url, transport_options=options) as connection:
        connection.default_channel.queue_declare(queue="celery")


def options_that_work(url: str, wanted: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """``wanted`` if the transport accepts it, else its defaults (and why)."""
    try:
        declare(url, wanted)
        return wanted, ""
    except Exception as exc:
        declare(url, {})
        reason = f"{type(exc).__name__}: {str(exc)[:60]}..."
        return {}, f"rejected {wanted} ({reason}); ran with its defaults"


def start_worker(
    env: dict[str, str], ready: Path, log: Path, args: argparse.Namespace
) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        *("-m", "celery", "-A", "bench_transport", "worker"),
        f"--pool={args.pool}",
        f"--concurrency={args.concurrency}",
        *("--loglevel", "WARNING", "--without-mingle", "--without-gossip"),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"worker did not start:\n{log.read_text()}")
        time.sleep(0.02)
    return process


def stop_worker(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def count(path: Path, query: str, params: list[str] | None = None) -> int:
    db = sqlite3.connect(path, timeout=30)
    try:
        return int(db.execute(query, params or []).fetchone()[0])
    finally:
        db.close()


def run(label: str, scheme: str, wanted: dict[str, Any], args: argparse.Namespace) -> Outcome:
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{scheme}-"))
    path = workdir / "tasks.sqlite3"
    broker, backend = f"{scheme}+sqlite:///{path}", f"db+sqlite:///{path}"
    options, note = options_that_work(broker, wanted)
    outcome = Outcome(label, options)
    if note:
        outcome.notes.append(note)
    ready, log = workdir / "ready", workdir / "worker.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "BENCH_BROKER": broker,
        "BENCH_BACKEND": backend,
        "BENCH_OPTIONS": json.dumps(options),
        "BENCH_READY": str(ready),
    }
    client = Celery("bench-client", set_as_current=False)
    client.conf.update(
        broker_url=broker,
        result_backend=backend,
        broker_transport_options=options,
        task_serializer="json",
        accept_content=["json"],
    )
    process = None
    try:
        # (b) drain: queue N tasks, then start the worker.
        started = time.perf_counter()
        with client.producer_or_acquire() as producer:
            ids = [client.send_task("bench.noop", producer=producer).id for _ in range(args.drain)]
        outcome.publish_rate = args.drain / (time.perf_counter() - started)
        process = start_worker(env, ready, log, args)
        deadline = time.monotonic() + args.drain_timeout
        placeholders = ",".join("?" * len(ids))
        done = (
            "SELECT count(*) FROM celery_taskmeta"
            f" WHERE status = 'SUCCESS' AND task_id IN ({placeholders})"
        )
        while True:
            try:
                finished = count(path, done, ids)
            except sqlite3.OperationalError:  # no celery_taskmeta table yet
                finished = 0
            if finished == len(ids):
                break
            if time.monotonic() > deadline:
                outcome.notes.append(
                    f"drain: only {finished}/{len(ids)} done in {args.drain_timeout} s"
                )
                break
            time.sleep(0.2)
        db = sqlite3.connect(path, timeout=30)
        try:
            first, last = db.execute(
                "SELECT min(date_done), max(date_done) FROM celery_taskmeta"
                f" WHERE status = 'SUCCESS' AND task_id IN ({placeholders})",
                ids,
            ).fetchone()
        finally:
            db.close()
        if finished > 1:
            span = (_parse(last) - _parse(first)).total_seconds()
            outcome.drain_rate = (finished - 1) / span if span > 0 else float("inf")
        time.sleep(0.5)  # let the last acks land
        # (c) rows left.
        outcome.rows_left = count(path, "SELECT count(*) FROM kombu_message")

        # (a) round trips, with the worker running and idle.
        for _ in range(3):
            client.send_task("bench.noop").get(timeout=30, interval=0.005)
        timings = []
        for _ in range(args.round_trips):
            t = time.perf_counter()
            client.send_task("bench.noop").get(timeout=30, interval=0.005)
            timings.append(time.perf_counter() - t)
        outcome.p50_ms = statistics.median(timings) * 1000
        outcome.p95_ms = statistics.quantiles(timings, n=20)[-1] * 1000
    finally:
        if process is not None:
            stop_worker(process)
        client.close()
        flask_tasks.transport.dispose_engines()
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome


def broker_bound_drain(scheme: str, args: argparse.Namespace) -> float:
    """Drain rate with results kept in the worker's memory: what the broker alone allows.

    Measured from the worker being ready to ``kombu_message`` being empty.
    """
    workdir = Path(tempfile.mkdtemp(prefix=f"bench-{scheme}-mem-"))
    path = workdir / "tasks.sqlite3"
    broker = f"{scheme}+sqlite:///{path}"
    declare(broker, {})
    ready, log = workdir / "ready", workdir / "worker.log"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
        ),
        "BENCH_BROKER": broker,
        "BENCH_BACKEND": "cache+memory://",
        "BENCH_READY": str(ready),
    }
    client = Celery("bench-client", set_as_current=False)
    client.conf.update(broker_url=broker, task_ignore_result=True)
    process = None
    try:
        with client.producer_or_acquire() as producer:
            for _ in range(args.drain):
                client.send_task("bench.noop", producer=producer, ignore_result=True)
        process = start_worker(env, ready, log, args)
        started = time.monotonic()
        while count(path, "SELECT count(*) FROM kombu_message"):
            if time.monotonic() - started > args.drain_timeout:
                return float("nan")
            time.sleep(0.01)
        return args.drain / (time.monotonic() - started)
    finally:
        if process is not None:
            stop_worker(process)
        client.close()
        flask_tasks.transport.dispose_engines()
        shutil.rmtree(workdir, ignore_errors=True)


def _parse(value: Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value
    return datetime.datetime.fromisoformat(str(value))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--round-trips", type=int, default=100)
    parser.add_argument("--drain", type=int, default=500)
    parser.add_argument("--drain-timeout", type=float, default=300)
    parser.add_argument("--pool", choices=["prefork", "solo"], default="prefork")
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()

    wanted = {"polling_interval": flask_tasks.transport.DEFAULT_POLLING_INTERVAL}
    print(
        f"{args.round_trips} sequential round trips, {args.drain} queued tasks to drain;"
        f" one `celery worker --pool={args.pool} --concurrency={args.concurrency}`"
        " per transport (Celery's default prefetch multiplier, 4);"
        " result backend db+sqlite:/// on the broker's file;"
        " results polled with AsyncResult.get(interval=0.005).\n",
        flush=True,
    )
    outcomes = []
    for label, scheme in (("stock sqla+sqlite", "sqla"), ("ours tasksdb+sqlite", "tasksdb")):
        print(f"running {label} ...", flush=True)
        outcomes.append(run(label, scheme, wanted, args))

    print()
    header = (
        f"{'transport':<22}{'options':<28}{'p50 ms':>9}{'p95 ms':>9}"
        f"{'drain/s':>10}{'rows left':>11}{'publish/s':>11}"
    )
    print(header)
    print("-" * len(header))
    for o in outcomes:
        print(
            f"{o.label:<22}{json.dumps(o.options) if o.options else '(defaults)':<28}"
            f"{o.p50_ms:>9.1f}{o.p95_ms:>9.1f}{o.drain_rate:>10.0f}{o.rows_left:>11}"
            f"{o.publish_rate:>11.0f}"
        )
    stock, ours = outcomes
    print(
        f"\nratios: p50 stock/ours = {stock.p50_ms / ours.p50_ms:.0f}x,"
        f" p95 stock/ours = {stock.p95_ms / ours.p95_ms:.0f}x,"
        f" drain ours/stock = {ours.drain_rate / stock.drain_rate:.1f}x"
    )
    ceiling = broker_bound_drain("tasksdb", args)
    print(
        f"context: ours drains {ceiling:.0f} tasks/s when the worker keeps results in memory"
        " (cache+memory://, drain timed until kombu_message is empty); the gap to the"
        " drain above is the db+sqlite result backend's cost."
    )
    print(
        f"targets for ours: p50 <= 30 ms: {'met' if ours.p50_ms <= 30 else 'MISSED'};"
        f" drain >= 200 tasks/s: {'met' if ours.drain_rate >= 200 else 'MISSED'};"
        f" rows left == 0: {'met' if ours.rows_left == 0 else 'MISSED'}"
    )
    for o in outcomes:
        for note in o.notes:
            print(f"note ({o.label}): {note}")


if __name__ == "__main__":
    main()
