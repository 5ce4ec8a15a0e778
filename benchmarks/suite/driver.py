"""The suite's hands inside one integration: run as a subprocess, one integration at a time.

    python -m benchmarks.suite.driver MODULE:FACTORY COMMAND [ARGS]

Two Celery-based integrations in one process would share Celery's default app (and
``@shared_task`` would bind to both), so the runner never imports an app module itself:
it asks this driver, which imports only one. Each command prints JSON lines on stdout.

* ``enqueue N IDS_FILE``: send N no-op tasks through the integration's Python API;
* ``wait IDS_FILE BASELINE TIMEOUT``: print ``{"ready": true}`` once set up, then poll
  until every task in IDS_FILE finished; the rate counts from the first completion seen
  to the last, so a worker's start-up is not part of it;
* ``progress N REPEATS``: the progress task and its plain twin, alternately, REPEATS
  times each; the loop times the tasks measured themselves;
* ``purge``: empty the integration's queue;
* ``drain-in-process N``: Flask-Executor's drain (no worker process to start).
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from .apps._common import wait_side


def _emit(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()


def _done(module: Any, app: Any, ids: list[str], baseline: int) -> int:
    if hasattr(module, "finished_count"):
        return int(module.finished_count(app)) - baseline
    return int(module.finished(app, ids))


def main(argv: list[str]) -> None:
    target, command, *args = argv
    module_name, _, factory = target.partition(":")
    module = importlib.import_module(module_name)
    app = getattr(module, factory)()

    if command == "enqueue":
        count, path = int(args[0]), Path(args[1])
        baseline = int(module.finished_count(app)) if hasattr(module, "finished_count") else 0
        started = time.perf_counter()
        ids = module.enqueue(app, count)
        path.write_text(json.dumps(ids))
        _emit({"n": len(ids), "seconds": time.perf_counter() - started, "baseline": baseline})

    elif command == "wait":
        ids = json.loads(Path(args[0]).read_text())
        baseline, timeout = int(args[1]), float(args[2])
        total = len(ids)
        interval = 0.05 if total <= 2000 else 0.1
        _emit({"ready": True})
        deadline = time.monotonic() + timeout
        first_t: float | None = None
        first_done = 0
        done = 0
        while True:
            done = _done(module, app, ids, baseline)
            now = time.time()
            if first_t is None and done > 0:
                first_t, first_done = now, done
            if done >= total:
                break
            if time.monotonic() > deadline:
                _emit({"error": f"{done} of {total} tasks finished within {timeout:.0f} s"})
                return
            time.sleep(interval)
        assert first_t is not None
        elapsed = now - first_t
        rate = (total - first_done) / elapsed if elapsed > 0 and total > first_done else None
        _emit({"n": total, "first_done": first_done, "seconds": elapsed, "rate": rate})

    elif command == "progress":
        n, repeats = int(args[0]), int(args[1])
        out: dict[str, list[Any]] = {"plain": [], "progress": [], "plain_ids": [], "ids": []}
        for r in range(repeats):
            order = [False, True] if r % 2 == 0 else [True, False]
            for report in order:
                token = uuid.uuid4().hex
                task_id = module.start_progress(app, n, token, report)
                seconds = wait_side(token, timeout=600)
                out["progress" if report else "plain"].append(seconds)
                out["ids" if report else "plain_ids"].append(task_id)
        _emit(out)

    elif command == "purge":
        module.purge(app)
        _emit({"purged": True})

    elif command == "drain-in-process":
        _emit(module.drain_in_process(app, int(args[0])))

    else:
        raise SystemExit(f"unknown command {command!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
