"""Server-Sent Events for task records: delivery delay and how many watchers one process holds.

Run from the repository root (needs Redis at 127.0.0.1:6379 and ``pip install gevent``)::

    .venv/bin/python benchmarks/bench_sse.py [--only latency,capacity] [--store redis|sqlite]
        [--worker gevent|gthread] [--writes 80] [--watchers 1000,2000,4000] [--per-task 10]

1. latency: the delay from a progress write (``store.write_progress``, what ``progress()``
   does) to the change reaching a client, for an SSE client and, on the same writes, for a
   client polling ``GET /tasks/<id>`` every 250 ms; p50/p95/max (goal: SSE p95 <= 250 ms).
   Writes come at random intervals (0.15 to 0.45 s), so the poller sees them at random
   phases. One gunicorn worker serves both clients.
2. capacity: N concurrent SSE watchers (``--per-task`` per task) held by one gunicorn
   worker (gevent by default); each round writes the progress of every task once and times
   each watcher's event; per N: delivered in under 1 s, p50/p95/max, the worker's memory
   and CPU, and the store's subscriber connections (goal: >= 1,000 watchers, every update
   delivered in under 1 s). The load client is this script: asyncio, raw sockets, HTTP/1.0.

The server is ``gunicorn "bench_sse:create_app()"`` (this file is its app module too), one
fresh process per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import os
import random
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flask import Flask

from flask_tasks import Tasks, TaskState
from flask_tasks.state import Progress, TaskRecord
from flask_tasks.store import create_store
from flask_tasks.store.base import RecordStore

HERE = Path(__file__).parent
ROOT = HERE.parent
REDIS = "redis://127.0.0.1:6379/14"
CURRENT = re.compile(rb'"current": (\d+)')
OPENING = 50
"""Streams the load client opens at once. (Each opening reads the record: more than 100
at once exceed redis-py 8's default pool of 100 connections per process under gevent.)"""

tasks = Tasks()


def create_app() -> Flask:
    """The served app: the store from BENCH_SSE_STORE with prefix BENCH_SSE_PREFIX."""
    app = Flask("bench_sse", instance_path=os.environ.get("BENCH_SSE_INSTANCE"))
    store_url = os.environ.get("BENCH_SSE_STORE", REDIS)
    if store_url.startswith("redis"):
        app.config["TASKS_BROKER_URL"] = store_url
    app.config.update(
        TASKS_STORE_URL=store_url,
        TASKS_STORE_PREFIX=os.environ.get("BENCH_SSE_PREFIX", "bench_sse"),
        TASKS_DEV_WORKER=False,
        # Every stream comes from this one load client: no per-client limit.
        TASKS_SSE_MAX_PER_CLIENT=0,
    )
    tasks.init_app(app)
    return app


# -- the server -----------------------------------------------------------------------------


def raise_open_files() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serve(worker: str, env: dict[str, str]) -> Iterator[tuple[int, int]]:
    """One gunicorn worker serving this module's app; yields (port, worker pid)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "-w",
        "1",
        "-k",
        worker,
        "--threads",
        "64",
        "--worker-connections",
        "20000",
        "--backlog",
        "4096",
        "--timeout",
        "120",
        "--graceful-timeout",  # open streams hold a stopping worker up to this long
        "3",
        "--log-level",
        "warning",
        "-b",
        f"127.0.0.1:{port}",
        "bench_sse:create_app()",
    ]
    full_env = {**os.environ, **env, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT / "src")])}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(argv, env=full_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    connection.request("GET", "/tasks/openapi.json")
                    connection.getresponse().read()
                    connection.close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        log.seek(0)
                        raise RuntimeError(log.read().decode()[-3000:]) from None
                    time.sleep(0.1)
            yield port, _child_of(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _child_of(pid: int) -> int:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                return int(entry)
    return pid


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_records(store: RecordStore, count: int) -> list[str]:
    now = datetime.datetime.now(datetime.timezone.utc)
    ids = []
    for _ in range(count):
        task_id = f"bench-{uuid.uuid4().hex}"
        store.create(
            TaskRecord(
                id=task_id,
                name="bench",
                state=TaskState.RUNNING,
                submitted_at=now,
                updated_at=now,
                progress=Progress.make(0, 1_000_000),
            )
        )
        ids.append(task_id)
    return ids


def percentiles(values: list[float]) -> str:
    if not values:
        return "no samples"
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return (
        f"p50 {statistics.median(ordered) * 1000:6.1f} ms  p95 {p95 * 1000:6.1f} ms  "
        f"max {ordered[-1] * 1000:6.1f} ms  (n={len(ordered)})"
    )


# -- 1. latency ---------------------------------------------------------------------------


def bench_latency(store: RecordStore, env: dict[str, str], worker: str, writes: int) -> None:
    (task_id,) = make_records(store, 1)
    written: dict[int, float] = {}
    seen_sse: dict[int, float] = {}
    seen_poll: dict[int, float] = {}
    done = threading.Event()

    def note(seen: dict[int, float], current: int) -> None:
        now = time.monotonic()
        for value in range(1, current + 1):
            seen.setdefault(value, now)

    with serve(worker, env) as (port, _):

        def sse_client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("GET", f"/tasks/{task_id}/events")
            response = connection.getresponse()
            while not done.is_set():
                line = response.readline()
                if not line:
                    break
                match = CURRENT.search(line) if line.startswith(b"data:") else None
                if match:
                    note(seen_sse, int(match.group(1)))
            connection.close()

        def poll_client() -> None:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            started = time.monotonic()
            tick = 0
            while not done.is_set():
                connection.request("GET", f"/tasks/{task_id}")
                body = connection.getresponse().read()
                match = CURRENT.search(body)
                if match:
                    note(seen_poll, int(match.group(1)))
                tick += 1
                time.sleep(max(0.0, started + tick * 0.25 - time.monotonic()))
            connection.close()

        readers = [threading.Thread(target=sse_client), threading.Thread(target=poll_client)]
        for reader in readers:
            reader.start()
        time.sleep(1.0)
        for value in range(1, writes + 1):
            time.sleep(random.uniform(0.15, 0.45))
            written[value] = time.monotonic()
            store.write_progress(task_id, Progress.make(value, 1_000_000))
        time.sleep(1.0)
        # Ends the SSE stream, and so its reader.
        store.save(task_id, celery_state="SUCCESS", meta='{"status": "SUCCESS", "result": 1}')
        done.set()
        for reader in readers:
            reader.join(10)

    def delays(seen: dict[int, float]) -> list[float]:
        return [seen[v] - written[v] for v in written if v in seen]

    print(f"latency ({worker}, {writes} writes, store {store!r})")
    print(f"  SSE                  {percentiles(delays(seen_sse))}")
    print(f"  polling every 250 ms {percentiles(delays(seen_poll))}")


# -- 2. capacity --------------------------------------------------------------------------


class Watcher:
    """One load-client stream: its task, and when each progress value arrived."""

    __slots__ = ("arrived", "ready", "task", "writer")

    def __init__(self, task: str) -> None:
        self.task = task
        self.arrived: dict[int, float] = {}
        self.ready = False  # got its first event
        self.writer: asyncio.StreamWriter | None = None


async def _watch(port: int, watcher: Watcher, opened: asyncio.Semaphore) -> None:
    async with opened:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        watcher.writer = writer
        writer.write(f"GET /tasks/{watcher.task}/events HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        status = await reader.readline()
        if b" 200 " not in status:
            raise RuntimeError(f"stream refused: {status!r}")
        while await reader.readline() not in (b"\r\n", b"\n", b""):
            pass
        # the first event: the record as it is
        while not (await reader.readline()).startswith(b"data:"):
            pass
        watcher.ready = True
    while True:
        line = await reader.readline()
        if not line:
            return
        if line.startswith(b"data:"):
            match = CURRENT.search(line)
            if match:
                watcher.arrived[int(match.group(1))] = time.monotonic()


async def _capacity(
    store: RecordStore, port: int, pid: int, count: int, per_task: int, rounds: int
) -> None:
    ids = make_records(store, max(1, count // per_task))
    watchers = [Watcher(ids[i % len(ids)]) for i in range(count)]
    opened = asyncio.Semaphore(OPENING)
    started = time.monotonic()
    readers = [asyncio.create_task(_watch(port, w, opened)) for w in watchers]
    while not all(w.ready for w in watchers):
        failed = [r for r in readers if r.done() and r.exception() is not None]
        if failed:
            raise RuntimeError(f"{len(failed)} streams failed: {failed[0].exception()!r}")
        await asyncio.sleep(0.05)
    connected = time.monotonic() - started
    await asyncio.sleep(1.0)
    rss, cpu = rss_mib(pid), cpu_seconds(pid)
    subscribers = _subscribers(store, pid)
    delays: list[float] = []
    late = missing = 0
    write_time = 0.0
    loop = asyncio.get_running_loop()
    for value in range(1, rounds + 1):
        written: dict[str, float] = {}

        def write_all(value: int = value, written: dict[str, float] = written) -> None:
            for task_id in ids:
                written[task_id] = time.monotonic()
                store.write_progress(task_id, Progress.make(value, 1_000_000))

        began = time.monotonic()
        await loop.run_in_executor(None, write_all)
        write_time = max(write_time, time.monotonic() - began)
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and any(value not in w.arrived for w in watchers):
            await asyncio.sleep(0.02)
        for w in watchers:
            if value in w.arrived:
                delay = w.arrived[value] - written[w.task]
                delays.append(delay)
                late += delay >= 1.0
            else:
                missing += 1
        await asyncio.sleep(0.5)
    cpu = cpu_seconds(pid) - cpu
    for w in watchers:
        if w.writer is not None:
            w.writer.close()
    for reader in readers:
        reader.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    total = count * rounds
    print(
        f"  {count:6d} watchers on {len(ids):5d} tasks: connected in {connected:5.1f} s; "
        f"{total - late - missing}/{total} events in < 1 s ({missing} missing); "
        f"{percentiles(delays)}; worker RSS {rss:.0f} MiB, CPU {cpu:.2f} s over {rounds} "
        f"rounds; writing took up to {write_time * 1000:.0f} ms a round; "
        f"subscriber connections {subscribers}"
    )


def _subscribers(store: RecordStore, pid: int) -> str:
    client = getattr(store, "client", None)
    if client is None:
        return "n/a (polled)"
    name = f"flask-tasks-sse:{pid}"
    found = [c for c in client.client_list() if c.get("name") == name]
    return ", ".join(f"1 with sub={c['sub']}" for c in found) or "none"


def bench_capacity(
    store: RecordStore, env: dict[str, str], worker: str, counts: list[int], per_task: int
) -> None:
    print(f"capacity ({worker} worker, {per_task} watchers per task, store {store!r})")
    for count in counts:
        with serve(worker, env) as (port, pid):
            try:
                asyncio.run(_capacity(store, port, pid, count, per_task, rounds=5))
            except (RuntimeError, OSError) as exc:
                print(f"  {count:6d} watchers: failed: {exc}")
                break


# -- main -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="latency,capacity")
    parser.add_argument("--store", choices=["redis", "sqlite"], default="redis")
    parser.add_argument("--worker", default="gevent")
    parser.add_argument("--writes", type=int, default=80)
    parser.add_argument("--watchers", default="1000,2000,4000")
    parser.add_argument("--per-task", type=int, default=10)
    args = parser.parse_args()
    print(f"open files: {raise_open_files()}; {os.cpu_count()} CPUs")

    prefix = f"bench_sse_{uuid.uuid4().hex[:8]}"
    instance = tempfile.mkdtemp(prefix="bench-sse-")
    store_url = REDIS if args.store == "redis" else f"sqlite:///{instance}/records.sqlite3"
    env = {
        "BENCH_SSE_STORE": store_url,
        "BENCH_SSE_PREFIX": prefix,
        "BENCH_SSE_INSTANCE": instance,
    }
    store = create_store(store_url, prefix=prefix)
    try:
        only = args.only.split(",")
        if "latency" in only:
            bench_latency(store, env, args.worker, args.writes)
        if "capacity" in only:
            counts = [int(n) for n in args.watchers.split(",")]
            bench_capacity(store, env, args.worker, counts, args.per_task)
    finally:
        store.drop()
        store.close()


if __name__ == "__main__":
    main()
