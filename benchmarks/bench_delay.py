"""The cost of ``delay()`` on Redis: flask-tasks vs Flask's official Celery pattern.

Run from the repository root (needs the Redis server at 127.0.0.1:6379)::

    .venv/bin/python benchmarks/bench_delay.py [--calls 500] [--rounds 15]

Both sides publish the same no-op task to the same Redis (database 14), each to a queue
nobody consumes (purged afterwards), with a Redis result backend, inside an app context as
a view would. The official side is the ``celery_init_app`` pattern of Flask's docs with a
``@shared_task(ignore_result=False)`` task; the flask-tasks side is ``@tasks.task``.
Rounds alternate between the two so a noisy neighbour hits both alike; the figure is
the median over rounds of the mean time per call, and the ratio flask-tasks / official.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from celery import Celery, shared_task
from celery import Task as CeleryTask
from flask import Flask

from flask_tasks import Tasks

REDIS = "redis://127.0.0.1:6379/14"


# -- the official pattern (Flask docs, "Background Tasks with Celery") --------------------


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(CeleryTask):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


@shared_task(ignore_result=False)
def official_noop(a: int, b: int) -> int:
    return a + b


def official() -> tuple[Flask, Callable[[], Any]]:
    app = Flask("official")
    app.config["CELERY"] = {
        "broker_url": REDIS,
        "result_backend": REDIS,
        "task_ignore_result": True,
        "task_default_queue": "bench-official",
        "broker_connection_retry_on_startup": True,
    }
    celery_app = celery_init_app(app)
    task = celery_app.tasks[official_noop.name]
    return app, lambda: task.delay(1, 2)


# -- flask-tasks ---------------------------------------------------------------------------

tasks = Tasks()


@tasks.task
def noop(a: int, b: int) -> int:
    return a + b


def flask_tasks() -> tuple[Flask, Callable[[], Any]]:
    app = Flask("flask_tasks")
    app.config.update(
        TASKS_BROKER_URL=REDIS,
        TASKS_RESULT_BACKEND=REDIS,
        TASKS_CELERY={"task_default_queue": "bench-flask-tasks"},
    )
    tasks.init_app(app)
    return app, lambda: noop.delay(1, 2)


# -- measuring -----------------------------------------------------------------------------


def time_calls(app: Flask, call: Callable[[], Any], count: int) -> list[float]:
    timings = []
    with app.app_context():
        for _ in range(count):
            started = time.perf_counter()
            call()
            timings.append(time.perf_counter() - started)
    return timings


def purge(app: Flask) -> None:
    with app.app_context():
        app.extensions["celery"].control.purge()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500, help="delay() calls per round")
    parser.add_argument("--rounds", type=int, default=15)
    options = parser.parse_args()

    sides = {"official pattern": official(), "flask-tasks": flask_tasks()}
    for app, call in sides.values():
        time_calls(app, call, 200)  # warm up: connections, caches
    rounds: dict[str, list[float]] = {name: [] for name in sides}
    samples: dict[str, list[float]] = {name: [] for name in sides}
    for index in range(options.rounds):
        order = list(sides.items()) if index % 2 == 0 else list(reversed(sides.items()))
        for name, (app, call) in order:
            timings = time_calls(app, call, options.calls)
            rounds[name].append(statistics.fmean(timings))
            samples[name].extend(timings)
        for app, _ in sides.values():
            purge(app)

    print(
        f"delay() on Redis, {options.rounds} rounds x {options.calls} calls "
        f"(Python {sys.version.split()[0]})"
    )
    print(f"{'':18} {'median of round means':>22} {'p50':>9} {'p95':>9}")
    for name in sides:
        ordered = sorted(samples[name])
        p50 = ordered[len(ordered) // 2]
        p95 = ordered[int(len(ordered) * 0.95)]
        print(
            f"{name:18} {statistics.median(rounds[name]) * 1e6:19.1f} us"
            f" {p50 * 1e6:6.1f} us {p95 * 1e6:6.1f} us"
        )
    ratio = statistics.median(rounds["flask-tasks"]) / statistics.median(
        rounds["official pattern"]
    )
    per_round = [
        a / b for a, b in zip(rounds["flask-tasks"], rounds["official pattern"], strict=True)
    ]
    print(
        f"ratio flask-tasks / official: {ratio:.2f}x "
        f"(per round: min {min(per_round):.2f}x, max {max(per_round):.2f}x; goal <= 1.0x)"
    )


if __name__ == "__main__":
    main()
