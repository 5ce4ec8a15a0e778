"""Run the soak: ``python -m benchmarks.soak [--quick] [--only redis|embedded]``.

For each backend: one worker (``flask tasks worker -c 4``, prefork: four pool processes),
the app served by gunicorn (gthread), status pollers in their own processes, and this
driver sending tasks (at most ``--backlog`` unfinished at a time, so the run is a steady
state rather than one burst) and sampling every process's RSS from /proc. When every task
has ended, the checks run; any failed check makes the exit status 1, and the reason is
printed. The figures are printed as Markdown (for docs/reliability.md) and as JSON.

Redis: a private database (``--redis-url``, db 11 by default), a store prefix and queue
of the run's own, all deleted at the end (never FLUSHDB). Embedded: a temporary instance
folder, deleted at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from array import array
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .pollers import poller_main

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable
APP = "benchmarks.soak.app:create_app"
FINAL = ("succeeded", "failed", "cancelled")


@dataclass
class Plan:
    """What one backend's run does, and the bounds it must stay within."""

    broker: str
    tasks: int
    pollers: int
    poller_processes: int
    interval: float
    steps: int
    step_seconds: float
    backlog: int
    concurrency: int
    web_workers: int
    web_threads: int
    p99_ms: float
    worker_rss_mb: float
    web_rss_mb: float
    warmup: float
    stall_seconds: float


def plans(args: argparse.Namespace) -> list[Plan]:
    scale = 0.04 if args.quick else 1.0  # --quick: 2,000 tasks on Redis, 200 embedded
    common = {
        "interval": args.interval,
        "steps": args.steps,
        "step_seconds": args.step_seconds,
        "concurrency": 4,
        "web_workers": 2,
        "web_threads": 4,
        "warmup": 0.2,
        "stall_seconds": args.stall,
        "worker_rss_mb": args.worker_rss_mb,
        "web_rss_mb": args.web_rss_mb,
    }
    redis_tasks = args.tasks or max(1, int(50_000 * scale))
    redis_pollers = args.pollers or 200
    embedded_tasks = args.embedded_tasks or max(1, int(5_000 * scale))
    embedded_pollers = args.embedded_pollers or 50
    chosen = []
    if args.only in (None, "redis"):
        chosen.append(
            Plan(
                broker="redis",
                tasks=redis_tasks,
                pollers=redis_pollers,
                poller_processes=2 if redis_pollers > 50 else 1,
                backlog=args.backlog,
                p99_ms=args.p99_ms,
                **common,
            )
        )
    if args.only in (None, "embedded"):
        chosen.append(
            Plan(
                broker="embedded",
                tasks=embedded_tasks,
                pollers=embedded_pollers,
                poller_processes=1,
                backlog=min(args.backlog, 500),
                p99_ms=args.embedded_p99_ms,
                **common,
            )
        )
    return chosen


class SoakFailure(Exception):
    """The run could not go on (a process died, the tasks stalled)."""


# -- processes ----------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    found: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            found.setdefault(ppid, []).append(int(entry))
    return found


def descendants(pid: int) -> list[int]:
    children, found, todo = _children(), [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def rss_kib(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@dataclass
class Started:
    role: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """Every process a run starts; :meth:`close` ends them all, however the run ends."""

    def __init__(self, logdir: Path, env: dict[str, str]) -> None:
        self.logdir = logdir
        self.env = env
        self.started: list[Started] = []

    def start(self, role: str, argv: list[str]) -> Started:
        log = self.logdir / f"{role}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                env=self.env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        started = Started(role, popen, log)
        self.started.append(started)
        return started

    def stop(self, proc: Started, grace: float = 30.0) -> None:
        pids = descendants(proc.popen.pid) if proc.popen.poll() is None else []
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.popen.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(grace)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.popen.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)

    def close(self) -> None:
        for proc in reversed(self.started):
            self.stop(proc, grace=10.0)
        self.started.clear()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(what: str, check: Any, proc: Started, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc.popen.poll() is not None:
            raise SoakFailure(f"{what}: {proc.role} exited:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise SoakFailure(f"{what}: not within {timeout:.0f} s:\n{proc.tail()}")
        time.sleep(0.2)


def answers_http(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/tasks/openapi.json", timeout=2):
            return True
    except OSError:
        return False


def warm_up(port: int, requests: int) -> None:
    """Reach every thread of every web process once (its first request sets things up)."""

    def one(_: int) -> None:
        url = f"http://127.0.0.1:{port}/tasks/{uuid.uuid4()}"
        with contextlib.suppress(OSError):  # a 404, as for any unknown id
            urllib.request.urlopen(url, timeout=10).close()

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(requests)))


# -- memory -------------------------------------------------------------------------------


@dataclass
class Sample:
    at: float
    finished: int
    rss: dict[int, int]  # pid -> KiB


@dataclass
class MemoryWatch:
    """RSS of every process of the worker and web trees, every ``period`` seconds."""

    roots: dict[str, int]  # role -> root pid
    count_finished: Any
    period: float = 2.0
    samples: list[Sample] = field(default_factory=list)
    roles: dict[int, str] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    error: BaseException | None = None

    def sample(self) -> Sample:
        rss = {}
        for role, root in self.roots.items():
            for depth, pid in enumerate(descendants(root)):
                value = rss_kib(pid)
                if value is not None:
                    rss[pid] = value
                    self.roles.setdefault(pid, role if depth == 0 else f"{role} child")
        sample = Sample(time.monotonic(), self.count_finished(), rss)
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.period):
                self.sample()
        except BaseException as exc:  # reported by the driver
            self.error = exc

    def start(self) -> None:
        self.sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self.sample()

    def growth(self, total: int, warmup: float) -> list[dict[str, Any]]:
        """Per process: RSS at the end of warm-up, the peak after it, and the growth."""
        after = [s for s in self.samples if s.finished >= warmup * total]
        rows = []
        for pid, role in sorted(self.roles.items(), key=lambda item: (item[1], item[0])):
            values = [(s.finished, s.rss[pid]) for s in after if pid in s.rss]
            if not values:
                continue
            first = values[0][1]
            peak = max(v for _, v in values)
            last = values[-1][1]
            slope = None
            if len(values) >= 3 and values[-1][0] > values[0][0]:
                xs = [x for x, _ in values]
                ys = [y for _, y in values]
                mx, my = statistics.fmean(xs), statistics.fmean(ys)
                var = sum((x - mx) ** 2 for x in xs)
                if var:
                    slope = sum((x - mx) * (y - my) for x, y in values) / var  # KiB per task
            start = min(s.rss[pid] for s in self.samples if pid in s.rss)
            rows.append(
                {
                    "pid": pid,
                    "role": role,
                    "start_mb": start / 1024,
                    "warm_mb": first / 1024,
                    "peak_mb": peak / 1024,
                    "end_mb": last / 1024,
                    "growth_mb": (peak - first) / 1024,
                    "bytes_per_task": None if slope is None else slope * 1024,
                }
            )
        return rows


# -- stores -------------------------------------------------------------------------------


def raw_record_count(plan: Plan, env: dict[str, str]) -> dict[str, int]:
    """Records counted straight in the store, apart from the library's own ``counts``."""
    prefix = env["SOAK_PREFIX"]
    if plan.broker == "redis":
        import redis

        client = redis.Redis.from_url(env["SOAK_REDIS_URL"])
        try:
            keys = sum(1 for _ in client.scan_iter(match=f"{prefix}:rec:*", count=2000))
            return {"record keys": keys, "time index": int(client.zcard(f"{prefix}:idx:all"))}
        finally:
            client.close()
    path = Path(env["SOAK_INSTANCE"]) / "tasks.sqlite3"
    with contextlib.closing(sqlite3.connect(path)) as db:
        (rows,) = db.execute(f"SELECT COUNT(*) FROM {prefix}_record").fetchone()
    return {"SQL rows": int(rows)}


def clean_redis(env: dict[str, str], tag: str) -> list[str]:
    """Delete what the run left in its Redis database; return what is still there.

    Every key naming the run's tag is the run's (its store prefix, its queue, their
    bindings); in Kombu's shared binding sets, the members naming the worker's host name;
    in Kombu's binding deadlines, the exchanges that have no binding left.
    """
    import redis

    client = redis.Redis.from_url(env["SOAK_REDIS_URL"])
    try:
        ours = [*client.scan_iter(match=f"*{tag}*", count=2000)]
        for start in range(0, len(ours), 500):
            client.delete(*ours[start : start + 500])
        for key in client.scan_iter(match="_kombu.binding.*", count=2000):
            members = [m for m in client.smembers(key) if tag.encode() in m]
            if members:
                client.srem(key, *members)
        deadlines = "_kombu.binding_deadlines"
        if client.type(deadlines) == b"zset":
            exchanges: list[bytes] = client.zrange(deadlines, 0, -1)  # type: ignore[assignment]
            for exchange in exchanges:
                if not client.exists(b"_kombu.binding." + exchange):
                    client.zrem(deadlines, exchange)
        left = [*client.scan_iter(match=f"*{tag}*", count=2000)]
        return [k.decode(errors="replace") for k in left]
    finally:
        client.close()


# -- one run ------------------------------------------------------------------------------


def percentile(sorted_values: array[float] | list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return float(sorted_values[k])


@contextlib.contextmanager
def environment(env: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def run(plan: Plan, args: argparse.Namespace, log: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:10]
    prefix = f"soak_{tag}"
    hostname = f"soak-{tag}"
    tmp = Path(tempfile.mkdtemp(prefix=f"flask-tasks-{prefix}-"))
    env = dict(os.environ)
    env.pop("FLASK_APP", None)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]),
        SOAK_BROKER=plan.broker,
        SOAK_PREFIX=prefix,
        SOAK_REDIS_URL=args.redis_url,
        SOAK_INSTANCE=str(tmp / "instance"),
        SOAK_PROGRESS_INTERVAL=str(args.progress_interval),
    )
    (tmp / "instance").mkdir()
    procs = Processes(tmp, env)
    ctx = multiprocessing.get_context("spawn")
    pollers: list[Any] = []
    outbox: Any = ctx.Queue()
    result: dict[str, Any] = {"broker": plan.broker, "plan": plan.__dict__, "failures": []}
    failures: list[str] = result["failures"]
    watch: MemoryWatch | None = None
    app = None
    try:
        with environment(env):
            from .app import create_app, soak_task

            app = create_app()
        store = app.extensions["tasks"].store

        def finished_count() -> int:
            counts = store.counts()
            return sum(n for state, n in counts.items() if state.value in FINAL)

        log(f"[{plan.broker}] prefix {prefix}, logs in {tmp}")
        worker = procs.start(
            "worker",
            [PY, "-m", "flask", "--app", APP, "tasks", "worker", "-l", "warning",
             "-c", str(plan.concurrency), "-n", f"{hostname}@%h"],
        )  # fmt: skip
        wait_until(
            "starting the worker",
            lambda: len(descendants(worker.popen.pid)) > plan.concurrency,
            worker,
        )
        port = free_port()
        web = procs.start(
            "web",
            [PY, "-m", "gunicorn", "-k", "gthread", "-w", str(plan.web_workers),
             "--threads", str(plan.web_threads), "-b", f"127.0.0.1:{port}",
             "--log-level", "warning", f"{APP}()"],
        )  # fmt: skip
        wait_until("starting gunicorn", lambda: answers_http(port), web)
        warm_up(port, 4 * plan.web_workers * plan.web_threads)
        inboxes = []
        per_process = -(-plan.pollers // plan.poller_processes)
        remaining = plan.pollers
        for _ in range(plan.poller_processes):
            inbox: Any = ctx.Queue()
            clients = min(per_process, remaining)
            remaining -= clients
            poller = ctx.Process(
                target=poller_main,
                args=(port, "/tasks", clients, plan.interval, inbox, outbox),
                daemon=True,
            )
            poller.start()
            pollers.append(poller)
            inboxes.append(inbox)
        time.sleep(1.0)  # the poller processes import and connect

        watch = MemoryWatch({"worker": worker.popen.pid, "web": web.popen.pid}, finished_count)
        watch.start()
        log(
            f"[{plan.broker}] {plan.tasks} tasks, {plan.pollers} pollers every "
            f"{plan.interval:g} s, worker -c {plan.concurrency}, gunicorn gthread "
            f"{plan.web_workers}x{plan.web_threads}"
        )
        started = time.monotonic()
        sent = finished = 0
        last_progress, last_finished, last_log = started, 0, started
        with app.app_context():
            while True:
                now = time.monotonic()
                if sent < plan.tasks and sent - finished < plan.backlog:
                    batch = min(50, plan.tasks - sent, plan.backlog - (sent - finished))
                    for _ in range(batch):
                        task_id = soak_task.delay(sent, plan.steps, plan.step_seconds).id
                        inboxes[sent % len(inboxes)].put(task_id)
                        sent += 1
                    finished = finished_count()
                    continue
                finished = finished_count()
                if finished >= plan.tasks:
                    break
                if finished != last_finished:
                    last_progress, last_finished = now, finished
                elif now - last_progress > plan.stall_seconds:
                    raise SoakFailure(
                        f"no task ended for {plan.stall_seconds:.0f} s ({finished} of "
                        f"{plan.tasks} done)\nworker:\n{worker.tail()}"
                    )
                for proc in (worker, web):
                    if proc.popen.poll() is not None:
                        raise SoakFailure(f"the {proc.role} process exited:\n{proc.tail()}")
                if now - last_log > 30:
                    rate = finished / (now - started)
                    log(f"[{plan.broker}] {finished}/{plan.tasks} done, {rate:.0f} tasks/s")
                    last_log = now
                time.sleep(0.2)
        elapsed = time.monotonic() - started
        log(f"[{plan.broker}] all {plan.tasks} ended in {elapsed:.0f} s")
        time.sleep(min(3 * plan.interval + 1, 5))  # the pollers see the last tasks end
        watch.stop()
        for inbox in inboxes:
            inbox.put(None)
        reports = [outbox.get(timeout=120) for _ in pollers]
        for poller in pollers:
            poller.join(30)

        # -- figures ------------------------------------------------------------------
        latencies: array[float] = array("d")
        at: array[float] = array("d")
        statuses: dict[str, int] = {}
        errors: list[str] = []
        error_count = followed = seen_final = 0
        spans = []
        for report in reports:
            chunk = array("d")
            chunk.frombytes(report["latencies_ms"])
            latencies.extend(chunk)
            chunk = array("d")
            chunk.frombytes(report["at"])
            at.extend(chunk)
            for status, n in report["statuses"].items():
                statuses[str(status)] = statuses.get(str(status), 0) + n
            errors += report["errors"]
            error_count += report["error_count"]
            followed += report["followed"]
            seen_final += report["seen_final"]
            spans.append((report["started"], report["ended"]))
        in_run = sorted(
            lat for lat, t in zip(latencies, at, strict=True) if t <= started + elapsed
        )
        ordered = sorted(latencies)
        poll_seconds = max(e for _, e in spans) - min(s for s, _ in spans)
        windows = _window_p99(latencies, at)
        counts = {state.value: n for state, n in store.counts().items()}
        raw = raw_record_count(plan, env)
        memory = watch.growth(plan.tasks, plan.warmup)
        result.update(
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            seconds=elapsed,
            tasks_per_second=plan.tasks / elapsed,
            status_requests=len(latencies),
            status_rps=len(latencies) / poll_seconds,
            p50_ms=percentile(ordered, 50),
            p95_ms=percentile(ordered, 95),
            p99_ms=percentile(ordered, 99),
            p99_during_run_ms=percentile(in_run, 99),
            max_ms=ordered[-1] if ordered else float("nan"),
            worst_window_p99_ms=max((w for _, w in windows), default=float("nan")),
            statuses=statuses,
            poll_errors=error_count,
            poll_error_examples=errors[:10],
            tasks_followed=followed,
            followed_to_final=seen_final,
            counts=counts,
            raw_counts=raw,
            memory=memory,
            rss_samples=len(watch.samples),
        )

        # -- checks -------------------------------------------------------------------
        unfinished = {k: v for k, v in counts.items() if k not in FINAL and v}
        if unfinished:
            failures.append(f"tasks not in a final state: {unfinished}")
        if counts.get("succeeded", 0) != plan.tasks:
            failures.append(f"{counts.get('succeeded', 0)} of {plan.tasks} tasks succeeded")
        if sum(counts.values()) != plan.tasks:
            failures.append(f"{sum(counts.values())} records (counts) for {plan.tasks} tasks")
        for what, n in raw.items():
            if n != plan.tasks:
                failures.append(f"{n} {what} for {plan.tasks} tasks")
        bad = {s: n for s, n in statuses.items() if s != "200"}
        if bad or error_count:
            failures.append(f"status polls: {error_count} errors, non-200 answers {bad}")
        if not latencies:
            failures.append("the pollers made no request")
        if result["p99_ms"] > plan.p99_ms:
            failures.append(f"status p99 {result['p99_ms']:.0f} ms > bound {plan.p99_ms:g} ms")
        for row in memory:
            bound = plan.web_rss_mb if row["role"].startswith("web") else plan.worker_rss_mb
            row["bound_mb"] = bound
            if row["growth_mb"] > bound:
                failures.append(
                    f"{row['role']} {row['pid']} grew {row['growth_mb']:.1f} MB after warm-up"
                    f" (bound {bound:g} MB)"
                )
        if watch.error is not None:
            failures.append(f"the memory sampler failed: {watch.error!r}")
        for proc in (worker, web):
            if proc.popen.poll() is not None:
                failures.append(f"the {proc.role} process exited early:\n{proc.tail()}")
            text = proc.log.read_text(errors="replace")
            if "Traceback" in text or "CRITICAL" in text:
                failures.append(f"the {proc.role} log shows errors:\n{proc.tail()}")
        return result
    except SoakFailure as exc:
        failures.append(str(exc))
        return result
    finally:
        if watch is not None:
            watch.stop()
        for poller in pollers:
            if poller.is_alive():
                poller.kill()
                poller.join(5)
        procs.close()
        if app is not None:
            with contextlib.suppress(Exception):
                app.extensions["tasks"].store.drop()
            with contextlib.suppress(Exception):
                app.extensions["tasks"].store.close()
            with contextlib.suppress(Exception):
                app.extensions["celery"].close()
        if plan.broker == "redis":
            try:
                left = clean_redis(env, tag)
            except Exception as exc:  # Redis went away: say so, do not hide the run's result
                failures.append(f"cleaning Redis failed: {exc!r}")
            else:
                if left:
                    failures.append(f"keys left in Redis after cleaning: {left[:10]}")
        if args.keep_logs:
            log(f"[{plan.broker}] logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _window_p99(
    latencies: array[float], at: array[float], width: float = 30.0
) -> list[tuple[float, float]]:
    """p99 per ``width``-second window (windows with at least 100 requests)."""
    if not at:
        return []
    start = min(at)
    buckets: dict[int, list[float]] = {}
    for lat, t in zip(latencies, at, strict=True):
        buckets.setdefault(int((t - start) // width), []).append(lat)
    return [
        (i * width, percentile(sorted(values), 99))
        for i, values in sorted(buckets.items())
        if len(values) >= 100
    ]


# -- report -------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as f:
        mem = f", {int(f.readline().split()[1]) / 1024 / 1024:.0f} GiB RAM"
    return f"{os.cpu_count()} cores ({cpu}){mem}, {platform.system()} {platform.release()}"


def versions() -> str:
    from importlib.metadata import version

    names = ["flask-tasks", "celery", "kombu", "flask", "gunicorn", "redis"]
    parts = [f"{name} {version(name)}" for name in names]
    parts.insert(0, f"Python {platform.python_version()}")
    return ", ".join(parts)


def markdown(results: list[dict[str, Any]], command: str) -> str:
    lines = [
        f"Command: `{command}`; {results[0].get('date', '?')}; {machine()}; {versions()}.",
        "",
        "| | " + " | ".join(r["broker"] for r in results) + " |",
        "|---|" + "---|" * len(results),
    ]

    def row(name: str, fmt: Any) -> None:
        cells = []
        for r in results:
            try:
                cells.append(fmt(r))
            except (KeyError, TypeError, ValueError):
                cells.append("-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")

    row("tasks", lambda r: f"{r['plan']['tasks']:,} ({r['plan']['steps']} progress writes each)")
    row("worker", lambda r: f"`tasks worker -c {r['plan']['concurrency']}` (prefork)")
    row(
        "status pollers",
        lambda r: f"{r['plan']['pollers']}, each polling every {r['plan']['interval']:g} s",
    )
    row("wall time", lambda r: f"{r['seconds']:.0f} s")
    row("throughput", lambda r: f"{r['tasks_per_second']:.0f} tasks/s")
    row("status requests", lambda r: f"{r['status_requests']:,} ({r['status_rps']:.0f} req/s)")
    row(
        "status p50 / p95 / p99",
        lambda r: f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f} / {r['p99_ms']:.1f} ms",
    )
    row(
        "worst 30 s window p99 / max",
        lambda r: f"{r['worst_window_p99_ms']:.0f} / {r['max_ms']:.0f} ms",
    )
    row("p99 bound", lambda r: f"{r['plan']['p99_ms']:g} ms")
    row("records (store counts / raw)", lambda r: _records(r))
    row("final states", lambda r: ", ".join(f"{k} {v:,}" for k, v in r["counts"].items() if v))
    row("non-200 answers, poll errors", lambda r: _errors(r))
    row("worker RSS growth after warm-up", lambda r: _growth(r, "worker"))
    row("web RSS growth after warm-up", lambda r: _growth(r, "web"))
    row("result", lambda r: "**pass**" if not r["failures"] else "**FAIL**")
    for r in results:
        for failure in r["failures"]:
            lines.append(f"\n{r['broker']}: FAIL: {failure}")
    return "\n".join(lines)


def _records(r: dict[str, Any]) -> str:
    raw = ", ".join(f"{n:,} {what}" for what, n in r["raw_counts"].items())
    return f"{sum(r['counts'].values()):,} / {raw}"


def _errors(r: dict[str, Any]) -> str:
    bad = sum(n for s, n in r["statuses"].items() if s != "200")
    return f"{bad}, {r['poll_errors']}"


def _growth(r: dict[str, Any], role: str) -> str:
    rows = [m for m in r["memory"] if m["role"].startswith(role)]
    worst = max(rows, key=lambda m: m["growth_mb"])
    bound = r["plan"]["web_rss_mb" if role == "web" else "worker_rss_mb"]
    ends = ", ".join(f"{m['end_mb']:.0f}" for m in rows)
    return (
        f"max {worst['growth_mb']:.1f} MB (bound {bound:g} MB) over {len(rows)} processes;"
        f" RSS at the end {ends} MB"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2,000 Redis + 200 embedded tasks")
    parser.add_argument("--only", choices=["redis", "embedded"])
    parser.add_argument("--tasks", type=int, help="Redis tasks (50,000)")
    parser.add_argument("--pollers", type=int, help="Redis status pollers (200)")
    parser.add_argument("--embedded-tasks", type=int, help="embedded tasks (5,000)")
    parser.add_argument("--embedded-pollers", type=int, help="embedded status pollers (50)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between polls")
    parser.add_argument("--steps", type=int, default=5, help="progress steps per task")
    parser.add_argument("--step-seconds", type=float, default=0.002)
    parser.add_argument("--progress-interval", type=float, default=0.0)
    parser.add_argument("--backlog", type=int, default=2000, help="most unfinished tasks")
    parser.add_argument("--p99-ms", type=float, default=1000.0, help="Redis status p99 bound")
    parser.add_argument("--embedded-p99-ms", type=float, default=1500.0)
    parser.add_argument("--worker-rss-mb", type=float, default=20.0)
    parser.add_argument("--web-rss-mb", type=float, default=40.0)
    parser.add_argument("--stall", type=float, default=120.0, help="fail after s without progress")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/11")
    parser.add_argument("--json", type=Path, help="write the results here as JSON")
    parser.add_argument("--keep-logs", action="store_true")
    args = parser.parse_args(argv)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results = [run(plan, args, log) for plan in plans(args)]
    command = "python -m benchmarks.soak " + " ".join(argv if argv is not None else sys.argv[1:])
    print(markdown(results, command.strip()))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    failed = [r["broker"] for r in results if r["failures"]]
    if failed:
        print(f"\nSOAK FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nsoak passed", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
