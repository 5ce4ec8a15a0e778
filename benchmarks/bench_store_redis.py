"""The cost of the Redis record store's writes and reads, beside Celery's own Redis backend.

Run from the repository root (needs the Redis server at 127.0.0.1:6379)::

    .venv/bin/python benchmarks/bench_store_redis.py [--calls 500] [--rounds 15]

Side by side in one run, on database 15, under a prefix of its own (dropped afterwards):

* progress: ``RedisStore.write_progress`` (one script call, returns the cancel flag) vs
  what ``update_state(state="PROGRESS", meta=...)`` costs on a plain
  ``Celery(backend="redis://...")`` app: ``backend.store_result(id, meta, "PROGRESS")``
  (a GET to check the task has not succeeded, then SETEX + PUBLISH);
* create: ``create`` vs ``create_pipelined`` then its finisher, back to back, and both
  again with one more Redis round trip in the middle (an RPUSH standing in for the
  broker publish of ``delay()``), where the pipelined create overlaps it;
* read: ``get`` (the whole record, one script call) vs Celery's
  ``backend.get_task_meta(id)`` (one GET, no record).

Rounds alternate between the sides so a noisy neighbour hits both alike; the figure is
the median over rounds of the mean time per call.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery

from flask_tasks.state import Progress, TaskRecord, TaskState, utcnow
from flask_tasks.store.redis import RedisStore

URL = "redis://127.0.0.1:6379/15"


def per_call(function: Callable[[], object], calls: int) -> float:
    """Mean microseconds per call over ``calls`` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        function()
    return (time.perf_counter() - started) / calls * 1e6


def record(owner: str = "bench") -> TaskRecord:
    now = utcnow()
    return TaskRecord(
        id=str(uuid.uuid4()),
        name="bench.task",
        state=TaskState.QUEUED,
        submitted_at=now,
        updated_at=now,
        owner=owner,
        queue="celery",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=500, help="calls per round and side")
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()
    calls, rounds = options.calls, options.rounds

    store = RedisStore(URL, prefix=f"bench{uuid.uuid4().hex[:8]}")
    app = Celery("bench", backend=URL, set_as_current=False)
    backend = app.backend
    side = redis.Redis.from_url(URL)  # the stand-in for the broker
    broker_list = f"{store.prefix}:broker"
    celery_id = str(uuid.uuid4())
    try:
        # A running task for the progress writes, and a finished one to read back.
        task = record()
        store.create(task)
        store.mark_running(task.id, name=task.name, attempt=1, started_at=utcnow())
        done = record()
        store.create(done)
        store.save(
            done.id,
            celery_state="SUCCESS",
            meta=json.dumps(
                {
                    "status": "SUCCESS",
                    "result": {"rows": 1000},
                    "traceback": None,
                    "children": [],
                    "date_done": utcnow().isoformat(),
                    "task_id": done.id,
                }
            ),
            progress=Progress.make(1000, 1000),
        )
        progress = Progress.make(500, 1000, "row 500", elapsed=12.5)
        celery_meta = {"current": 500, "total": 1000, "message": "row 500"}

        def publish() -> None:
            side.rpush(broker_list, b"x" * 200)

        def create_then_publish() -> None:
            store.create(record())
            publish()

        def pipelined_around_publish() -> None:
            finish = store.create_pipelined(record())
            publish()
            finish()

        def pipelined() -> None:
            store.create_pipelined(record())()

        sides: dict[str, Callable[[], Any]] = {
            "write_progress": lambda: store.write_progress(task.id, progress),
            "celery store_result PROGRESS": lambda: backend.store_result(
                celery_id, celery_meta, "PROGRESS"
            ),
            "create": lambda: store.create(record()),
            "create_pipelined + finish": pipelined,
            "create, then publish": create_then_publish,
            "create_pipelined around publish": pipelined_around_publish,
            "get": lambda: store.get(done.id),
            "celery get_task_meta": lambda: backend.get_task_meta(done.id),
        }
        for function in sides.values():  # warm up: connections, script cache
            for _ in range(50):
                function()
        results: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(rounds):
            for name, function in sides.items():
                results[name].append(per_call(function, calls))
                side.delete(broker_list)
        median = {name: statistics.median(values) for name, values in results.items()}

        print(f"{calls} calls x {rounds} rounds, median of the per-round means (us per call)")
        for name, value in median.items():
            spread = f"{min(results[name]):7.1f} .. {max(results[name]):7.1f}"
            print(f"  {name:34s} {value:7.1f}   (rounds {spread})")
        print("ratios")
        pairs = [
            ("write_progress", "celery store_result PROGRESS"),
            ("create_pipelined + finish", "create"),
            ("create_pipelined around publish", "create, then publish"),
            ("get", "celery get_task_meta"),
        ]
        for ours, theirs in pairs:
            print(f"  {ours} / {theirs}: {median[ours] / median[theirs]:.2f}x")
    finally:
        store.drop()
        store.close()
        backend.client.delete(backend.get_key_for_task(celery_id))
        backend.client.connection_pool.disconnect()
        app.close()
        side.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
