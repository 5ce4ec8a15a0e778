"""Task records on Redis, side by side with Celery's own way, in one run.

Run from the repository root (needs Redis at 127.0.0.1:6379, and wrk for --http)::

    .venv/bin/python benchmarks/bench_records.py [--only progress,throttle,http,drain]

1. progress: one written ``progress()`` update (a task context with no throttling) vs
   Celery's ``update_state(state="PROGRESS", meta=...)`` on the Redis result backend of the
   official Flask pattern; per call, median over rounds, and the ratio (goal <= 0.3x).
2. throttle: the cost of a ``progress()`` call that the throttle swallows (goal < 1 us),
   next to an empty Python function call.
3. http: ``GET /tasks/<id>`` vs a trivial JSON route of the same app, both under gunicorn
   (2 gthread workers), loaded by wrk on this machine; requests/s and the ratio (goal
   >= 0.8x).
4. drain: 10,000 queued no-op tasks, one prefork worker with 2 processes, flask-tasks
   (records in Redis) vs the official pattern (Redis result backend); tasks/s and the ratio
   (goal >= 1.0x). The clock starts when the worker is ready and stops when every result
   (every final record) is written.

The apps and tasks live in ``benchmarks/records_apps.py``, which the gunicorn and worker
processes import too.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import redis
from records_apps import REDIS, create_app, create_official, noop, official_noop

from flask_tasks import TaskState
from flask_tasks.progress import TaskContext, _current, progress

HERE = Path(__file__).parent

# -- measurements ---------------------------------------------------------------------------


def _rounds(fn: Any, calls: int, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        out.append((time.perf_counter() - started) / calls)
    return out


def bench_progress(calls: int = 1000, rounds: int = 9) -> None:
    app = create_app()
    store = app.extensions["tasks"].store
    celery_app = create_official()
    official = celery_app.tasks[official_noop.name]
    ours_id, theirs_id = str(uuid.uuid4()), str(uuid.uuid4())
    store.mark_running(ours_id, name=noop.name, attempt=1, started_at=_now())
    ctx = TaskContext(id=ours_id, name=noop.name, attempt=1, store=store, interval=0.0)
    token = _current.set(ctx)
    i = [0]

    def ours() -> None:
        i[0] += 1
        progress(i[0], 1_000_000, "row")

    def theirs() -> None:
        i[0] += 1
        official.update_state(
            task_id=theirs_id, state="PROGRESS", meta={"current": i[0], "total": 1_000_000}
        )

    try:
        ours_t, theirs_t = [], []
        for _ in range(rounds):
            ours_t += _rounds(ours, calls, 1)
            theirs_t += _rounds(theirs, calls, 1)
    finally:
        _current.reset(token)
    a, b = statistics.median(ours_t), statistics.median(theirs_t)
    print(f"progress write: flask-tasks {a * 1e6:7.1f} us   update_state {b * 1e6:7.1f} us")
    print(f"  ratio flask-tasks / update_state: {a / b:.2f}x (goal <= 0.3x)")
    store.drop()


def bench_throttle(calls: int = 1_000_000) -> None:
    ctx = TaskContext(id="t", name="t", attempt=1, store=None, interval=3600)
    ctx.next_write = time.monotonic() + 3600
    token = _current.set(ctx)

    def empty(current: float, total: float | None = None, message: str | None = None) -> None:
        pass

    try:
        throttled = min(_rounds(lambda: progress(1, 2), calls // 10, 5))
        baseline = min(_rounds(lambda: empty(1, 2), calls // 10, 5))
    finally:
        _current.reset(token)
    print(
        f"throttled progress() call: {throttled * 1e9:6.0f} ns "
        f"(an empty function call with a lambda around it: {baseline * 1e9:.0f} ns; goal < 1 us)"
    )


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _wrk(url: str, seconds: int, script: str | None = None) -> float:
    extra = ["-s", script] if script else []
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert match, out
    assert "Non-2xx" not in out, out
    return float(match[1])


def bench_http(seconds: int = 8, rounds: int = 3) -> None:
    if shutil.which("wrk") is None:
        print("http: skipped, wrk is not installed (apt-get install wrk)")
        return
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(HERE), "BENCH_PREFIX": prefix}
    os.environ["BENCH_PREFIX"] = prefix
    app = create_app()
    with app.app_context():
        handle = noop.delay()
        many = [noop.delay().id for _ in range(10_000)]
    store = app.extensions["tasks"].store
    store.save(handle.id, celery_state="SUCCESS", meta='{"status": "SUCCESS", "result": null}')
    # wrk picks one of 10,000 records per request: more than the status cache holds
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    script.write_text(
        "local ids = {" + ",".join(f'"{i}"' for i in many) + "}\n"
        "request = function()\n"
        '  return wrk.format(nil, "/tasks/" .. ids[math.random(#ids)])\n'
        "end\n"
    )
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-w",
            "2",
            "-k",
            "gthread",
            "--threads",
            "4",
            "-b",
            f"127.0.0.1:{port}",
            "records_apps:create_app()",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        import urllib.request

        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(base + "/trivial", timeout=1).read()
                break
            except OSError:
                time.sleep(0.1)
        with urllib.request.urlopen(f"{base}/tasks/{handle.id}", timeout=5) as response:
            assert response.status == 200, response.status  # a 404 would be no benchmark
        status, spread, trivial = [], [], []
        for _ in range(rounds):
            status.append(_wrk(f"{base}/tasks/{handle.id}", seconds))
            spread.append(_wrk(base, seconds, str(script)))
            trivial.append(_wrk(f"{base}/trivial", seconds))
        a, c, b = statistics.median(status), statistics.median(spread), statistics.median(trivial)
        print(f"trivial JSON route:                       {b:8.0f} req/s")
        print(f"GET /tasks/<id>, one finished task:       {a:8.0f} req/s  ratio {a / b:.2f}x")
        print(f"GET /tasks/<id>, 10,000 tasks at random:  {c:8.0f} req/s  ratio {c / b:.2f}x")
        print("  (goal >= 0.8x; the first is served from the status cache, the second reads")
        print("   the store on nearly every request)")
    finally:
        script.unlink()
        server.terminate()
        server.wait(10)
        store.drop()


def _now() -> Any:
    from flask_tasks.state import utcnow

    return utcnow()


def _drain(side: str, count: int) -> float:
    queue = f"bench-{side}-{uuid.uuid4().hex[:6]}"
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    os.environ.update(BENCH_QUEUE=queue, BENCH_PREFIX=prefix, BENCH_SIDE=side)
    client = redis.Redis.from_url(REDIS)
    if side == "ours":
        app = create_app()
        store = app.extensions["tasks"].store
        with app.app_context():
            ids = [noop.delay().id for _ in range(count)]

        def done() -> int:
            return int(store.counts()[TaskState.SUCCEEDED])
    else:
        celery_app = create_official()
        task = celery_app.tasks[official_noop.name]
        ids = [task.delay().id for _ in range(count)]
        keys = [f"celery-task-meta-{i}" for i in ids]

        def done() -> int:
            total = 0
            for i in range(0, len(keys), 1000):
                total += int(client.exists(*keys[i : i + 1000]))
            return total

    env = {**os.environ, "PYTHONPATH": str(HERE)}
    log = Path(tempfile.mkstemp(prefix="bench-worker-", suffix=".log")[1])
    with open(log, "w") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "records_apps", "worker", "--pool",
             "prefork", "-c", "2", "-Q", queue, "-l", "info", "--without-mingle",
             "--without-gossip", "--without-heartbeat"],
            env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            if worker.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {side} worker did not start:\n{log.read_text()}")
            time.sleep(0.05)
        started = time.perf_counter()
        while done() < count:
            if time.perf_counter() - started > 600:
                raise RuntimeError(f"{side}: the worker did not finish within 600 s")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        worker.terminate()
        worker.wait(60)
        log.unlink()
        if side == "ours":
            store.drop()
        else:
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
        client.close()
    return count / elapsed


def bench_drain(count: int = 10_000, rounds: int = 2) -> None:
    ours, theirs = [], []
    for _ in range(rounds):
        ours.append(_drain("ours", count))
        theirs.append(_drain("official", count))
    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"drain {count} no-op tasks, prefork -c 2: flask-tasks {a:6.0f}/s   official {b:6.0f}/s")
    print(f"  ratio flask-tasks / official: {a / b:.2f}x (goal >= 1.0x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="progress,throttle,http,drain")
    parser.add_argument("--drain-count", type=int, default=10_000)
    options = parser.parse_args()
    chosen = options.only.split(",")
    print(f"Python {sys.version.split()[0]}, Redis at {REDIS}")
    if "progress" in chosen:
        bench_progress()
    if "throttle" in chosen:
        bench_throttle()
    if "http" in chosen:
        bench_http()
    if "drain" in chosen:
        bench_drain(options.drain_count)


if __name__ == "__main__":
    main()
