"""The workloads, run side by side on every integration, in one run.

Order: the web servers of every integration start first and stay up; then

1. submit: wrk on ``POST /submit`` (no worker running; queues purged afterwards);
2. per worker setup: start its workers, wait for a first task to finish, the idle
   worker's memory, end-to-end round trips, the progress task, stop;
3. drain: 10,000 queued no-op tasks per setup, the runs of all setups interleaved;
4. status: wrk on the status route, one finished task, then 10,000 at random;
5. memory: a fresh one-process server per integration, 10,000 submits.

wrk rounds rotate through the integrations, so a noisy neighbour hits them all alike.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from .integrations import INTEGRATIONS, PY, Integration, WorkerSetup
from .loadgen import Client, write_script, wrk
from .procs import Proc, Processes, StepError, free_port, memory_kib, tree, wait_http
from .redismon import CommandLog

ROOT = Path(__file__).resolve().parents[2]
REDIS_DB = 12
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"


@dataclass(frozen=True)
class Sizes:
    seconds: float
    rounds: int
    warmup: float
    connections: int
    threads: int
    e2e_samples: int
    drain_tasks: int
    drain_runs: int
    progress_calls: int
    progress_repeats: int
    memory_requests: int
    status_many: bool


FULL = Sizes(
    seconds=8,
    rounds=3,
    warmup=2,
    connections=16,
    threads=2,
    e2e_samples=200,
    drain_tasks=10_000,
    drain_runs=3,
    progress_calls=10_000,
    progress_repeats=3,
    memory_requests=10_000,
    status_many=True,
)
QUICK = Sizes(
    seconds=2,
    rounds=3,
    warmup=1,
    connections=16,
    threads=2,
    e2e_samples=40,
    drain_tasks=500,
    drain_runs=1,
    progress_calls=1_000,
    progress_repeats=3,
    memory_requests=0,
    status_many=False,
)


def summarize(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each figure over rounds; the latency curve, median per point."""
    out: dict[str, Any] = {"rounds": [{k: v for k, v in r.items() if k != "cdf"} for r in rounds]}
    for key in ("rps", "p50", "p95", "p99"):
        out[key] = summarize([r[key] for r in rounds])
    out["cdf"] = {p: statistics.median(r["cdf"][p] for r in rounds) for p in rounds[0]["cdf"]}
    return out


def percentile(ordered: list[float], q: float) -> float:
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class Suite:
    """One run of the suite: its processes, its results, and the cleanup."""

    def __init__(
        self,
        *,
        sizes: Sizes,
        integrations: list[Integration],
        workloads: set[str],
        log: Callable[[str], None],
    ) -> None:
        self.sizes = sizes
        self.integrations = integrations
        self.workloads = workloads
        self.log = log
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-suite-"))
        self.procs = Processes(self.tmp)
        self.web: dict[str, tuple[Proc, int]] = {}
        self.finished_ids: dict[str, list[str]] = {}
        self.results: dict[str, Any] = {}
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "BENCH_REDIS_DB": str(REDIS_DB),
            "BENCH_INSTANCE": str(self.tmp / "instance"),
        }
        self.redis = redis.Redis.from_url(REDIS_URL)

    # -- plumbing ---------------------------------------------------------------------------

    def env_for(self, integ: Integration, setup: WorkerSetup | None = None) -> dict[str, str]:
        env = {**self.env, **dict(integ.env)}
        if setup is not None:
            env.update(dict(setup.env))
        return env

    def driver(
        self, integ: Integration, *args: str, timeout: float = 600, what: str = ""
    ) -> dict[str, Any]:
        """Run one driver command for ``integ``; its last JSON line."""
        argv = [PY, "-m", "benchmarks.suite.driver", integ.target, *args]
        step = f"{integ.label}: {what or args[0]}"
        try:
            done = subprocess.run(
                argv,
                env=self.env_for(integ),
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as exc:
            raise StepError(f"{step}: no answer within {timeout:.0f} s") from exc
        lines = [x for x in done.stdout.splitlines() if x.startswith("{")]
        if done.returncode != 0 or not lines:
            raise StepError(f"{step}: the driver failed:\n{done.stderr[-3000:]}")
        result: dict[str, Any] = json.loads(lines[-1])
        if "error" in result:
            raise StepError(f"{step}: {result['error']}")
        return result

    def start_web(self, integ: Integration, processes: int, tag: str) -> tuple[Proc, int]:
        port = free_port()
        argv = [
            PY, "-m", "gunicorn",
            "-w", str(processes), "-k", "gthread", "--threads", str(integ.web_threads),
            "-b", f"127.0.0.1:{port}", "--log-level", "warning",
            f"{integ.target}()",
        ]  # fmt: skip
        proc = self.procs.start(f"web-{integ.key}-{tag}", argv, self.env_for(integ), cwd=ROOT)
        wait_http(port, proc, f"{integ.label}: starting gunicorn")
        return proc, port

    @contextmanager
    def workers(self, integ: Integration, setup: WorkerSetup) -> Iterator[list[Proc]]:
        started: list[Proc] = []
        try:
            for i, argv in enumerate(setup.commands):
                started.append(
                    self.procs.start(
                        f"worker-{setup.key}-{i}", list(argv), self.env_for(integ, setup), ROOT
                    )
                )
            yield started
        finally:
            for proc in started:
                self.procs.stop(proc)

    def check_alive(self, procs: list[Proc], what: str) -> None:
        for proc in procs:
            if proc.popen.poll() is not None:
                raise StepError(f"{what}: a worker exited:\n{proc.tail()}")

    def worker_memory(self, procs: list[Proc]) -> dict[str, int]:
        return memory_kib([pid for proc in procs for pid in tree(proc.pid)])

    def round_trip(
        self, client: Client, integ: Integration, procs: list[Proc], timeout: float, what: str
    ) -> tuple[float, int]:
        """Submit over HTTP and poll the status route until it says finished."""
        started = time.perf_counter()
        task_id = client.submit()
        path = integ.status_path.format(id=task_id)
        polls = 0
        deadline = time.monotonic() + timeout
        while True:
            status, data = client.request("GET", path)
            polls += 1
            if status == 200 and integ.finished(data):
                return (time.perf_counter() - started) * 1000, polls
            if status not in (200, 404):
                raise StepError(f"{what}: GET {path} answered {status}: {data!r}")
            if time.monotonic() > deadline:
                self.check_alive(procs, what)
                raise StepError(f"{what}: task {task_id} not finished within {timeout:.0f} s")

    # -- the run ----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        started = time.time()
        self.redis.flushdb()  # the suite's own database
        try:
            self.start_servers()
            if "submit" in self.workloads:
                self.phase_submit()
            self.purge_all()
            self.phase_workers()
            if "drain" in self.workloads:
                self.phase_drain()
            if "status" in self.workloads:
                self.phase_status()
            if "memory" in self.workloads and self.sizes.memory_requests:
                self.phase_memory()
        finally:
            self.close()
        self.results["duration_s"] = time.time() - started
        return self.results

    def close(self) -> None:
        self.procs.close()
        try:
            self.redis.flushdb()
        finally:
            self.redis.close()
            shutil.rmtree(self.tmp, ignore_errors=True)

    def start_servers(self) -> None:
        for integ in self.integrations:
            if not any(integ.takes(w) for w in self.workloads):
                continue
            self.log(f"starting gunicorn for {integ.label}")
            self.web[integ.key] = self.start_web(integ, integ.web_processes, "main")

    def wants(self, integ: Integration, workload: str) -> bool:
        return workload in self.workloads and integ.takes(workload)

    def purge_all(self) -> None:
        for integ in self.integrations:
            if integ.durable:
                self.driver(integ, "purge")

    def url(self, integ: Integration, path: str) -> str:
        return f"http://127.0.0.1:{self.web[integ.key][1]}{path}"

    def load(self, name: str, targets: dict[str, tuple[str, Path]]) -> dict[str, Any]:
        """wrk rounds over ``targets`` ({integration: (url, script)}), rotating the order."""
        sizes = self.sizes
        keys = list(targets)
        for key in keys:  # warm up: connections, caches, every gunicorn process
            url, script = targets[key]
            wrk(url, script, seconds=sizes.warmup, connections=sizes.connections,
                threads=sizes.threads, what=f"{key}: {name} warm-up")  # fmt: skip
        rounds: dict[str, list[dict[str, Any]]] = {key: [] for key in keys}
        for r in range(sizes.rounds):
            for key in keys[r % len(keys) :] + keys[: r % len(keys)]:
                url, script = targets[key]
                result = wrk(url, script, seconds=sizes.seconds, connections=sizes.connections,
                             threads=sizes.threads, what=f"{key}: {name}")  # fmt: skip
                rounds[key].append(result)
                self.log(
                    f"{name} round {r + 1} {key}: {result['rps']:.0f} req/s, "
                    f"p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms"
                )
        return {key: summarize_rounds(value) for key, value in rounds.items()}

    # -- 1. submit --------------------------------------------------------------------------

    def phase_submit(self) -> None:
        script = write_script(self.tmp / "submit.lua", method="POST")
        targets = {
            i.key: (self.url(i, "/submit"), script) for i in self.integrations if i.takes("submit")
        }
        self.results["submit"] = self.load("submit", targets)

    # -- 2. per worker setup: idle memory, end to end, progress --------------------------------

    def setups(self, workload: str | None = None) -> list[tuple[Integration, WorkerSetup]]:
        return [
            (i, s)
            for i in self.integrations
            for s in i.workers
            if workload is None or i.takes(workload)
        ]

    def phase_workers(self) -> None:
        e2e: dict[str, Any] = {}
        progress: dict[str, Any] = {}
        idle: dict[str, Any] = {}
        for integ, setup in self.setups():
            wants_e2e = self.wants(integ, "e2e") and not setup.progress_only
            wants_progress = self.wants(integ, "progress") and integ.progress is not None
            wants_memory = self.wants(integ, "memory") and not setup.progress_only
            if not (wants_e2e or wants_progress or wants_memory):
                continue
            what = setup.label
            self.log(f"{what}: starting the worker")
            with self.workers(integ, setup) as procs:
                client = Client(self.web[integ.key][1], what)
                try:
                    self.round_trip(client, integ, procs, 120, f"{what}: first task")
                    if wants_memory and procs:
                        time.sleep(1.0)
                        idle[setup.key] = self.worker_memory(procs)
                    if wants_e2e:
                        e2e[setup.key] = self.end_to_end(client, integ, setup, procs)
                    if wants_progress:
                        progress[setup.key] = self.progress(integ, setup, procs)
                finally:
                    client.close()
                self.check_alive(procs, what)
        if e2e:
            self.results["e2e"] = e2e
        if progress:
            self.results["progress"] = progress
        if idle:
            self.results.setdefault("memory", {})["worker_idle"] = idle

    def end_to_end(
        self, client: Client, integ: Integration, setup: WorkerSetup, procs: list[Proc]
    ) -> dict[str, Any]:
        samples = min(setup.e2e_samples or self.sizes.e2e_samples, self.sizes.e2e_samples)
        times, polls = [], []
        for i in range(samples + 5):
            ms, n = self.round_trip(client, integ, procs, 60, f"{setup.label}: end to end")
            if i >= 5:  # the first few warm the worker up
                times.append(ms)
                polls.append(n)
        ordered = sorted(times)
        self.log(
            f"{setup.label}: end to end p50 {percentile(ordered, 50):.2f} ms, "
            f"p95 {percentile(ordered, 95):.2f} ms"
        )
        return {
            "samples": times,
            "p50": percentile(ordered, 50),
            "p95": percentile(ordered, 95),
            "p99": percentile(ordered, 99),
            "polls_median": statistics.median(polls),
        }

    def progress(
        self, integ: Integration, setup: WorkerSetup, procs: list[Proc]
    ) -> dict[str, Any]:
        n, repeats = self.sizes.progress_calls, self.sizes.progress_repeats
        timed = self.driver(integ, "progress", str(n), str(repeats), what="progress")
        added = [(p - b) * 1000 for p, b in zip(timed["progress"], timed["plain"], strict=True)]
        out: dict[str, Any] = {
            "calls": n,
            "added_ms": summarize(added),
            "loop_ms": summarize([p * 1000 for p in timed["progress"]]),
            "plain_ms": summarize([p * 1000 for p in timed["plain"]]),
        }
        if integ.key != "flask-tasks-embedded":  # Redis only: SQLite has no command log
            with CommandLog(REDIS_URL, REDIS_DB) as commands:
                counted = self.driver(integ, "progress", str(n), "1", what="progress count")
            with_progress = commands.count(counted["ids"][0])
            without = commands.count(counted["plain_ids"][0])
            out["writes"] = with_progress["writes"] - without["writes"]
            out["commands"] = with_progress["commands"] - without["commands"]
        self.check_alive(procs, f"{setup.label}: progress")
        self.log(
            f"{setup.label}: progress adds {out['added_ms']['median']:.1f} ms per {n} calls, "
            f"{out.get('writes', '?')} writes"
        )
        return out

    # -- 3. drain ---------------------------------------------------------------------------

    def phase_drain(self) -> None:
        setups = [(i, s) for i, s in self.setups("drain") if not s.progress_only]
        runs: dict[str, list[dict[str, Any]]] = {s.key: [] for _, s in setups}
        after: dict[str, dict[str, int]] = {}
        for r in range(self.sizes.drain_runs):
            for integ, setup in setups:
                if setup.drain_tasks is not None and r > 0:
                    continue  # a slow default: one smaller run
                result = self.drain_once(integ, setup)
                runs[setup.key].append(result)
                if "memory" in result:
                    after[setup.key] = result.pop("memory")
        self.results["drain"] = {
            key: {"runs": value, "rate": summarize([v["rate"] for v in value])}
            for key, value in runs.items()
        }
        if after and "memory" in self.workloads:
            self.results.setdefault("memory", {})["worker_after_drain"] = after

    def drain_once(self, integ: Integration, setup: WorkerSetup) -> dict[str, Any]:
        count = min(setup.drain_tasks or self.sizes.drain_tasks, self.sizes.drain_tasks)
        what = f"{setup.label}: drain"
        if not setup.commands:  # Flask-Executor: in the process, nothing to queue
            result = self.driver(integ, "drain-in-process", str(count), what="drain")
            rate = count / result["seconds"]
            self.log(f"{what}: {rate:.0f} tasks/s")
            return {"n": count, "rate": rate, "seconds": result["seconds"]}
        ids_file = self.tmp / f"ids-{setup.key}.json"
        queued = self.driver(integ, "enqueue", str(count), str(ids_file), what="drain: enqueue")
        argv = [PY, "-m", "benchmarks.suite.driver", integ.target, "wait", str(ids_file),
                str(queued["baseline"]), "900"]  # fmt: skip
        waiter = subprocess.Popen(
            argv,
            env=self.env_for(integ),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        lines = LineReader(waiter)
        try:
            lines.next(60, f"{what}: the waiting driver")  # {"ready": true}
            with self.workers(integ, setup) as procs:
                result = lines.next(960, what, procs)
                if "error" in result:
                    self.check_alive(procs, what)
                    raise StepError(f"{what}: {result['error']}")
                self.check_alive(procs, what)
                result["memory"] = self.worker_memory(procs)
        finally:
            if waiter.poll() is None:
                waiter.kill()
            waiter.wait(10)
        self.finished_ids[integ.key] = json.loads(ids_file.read_text())
        self.log(f"{what}: {result['rate']:.0f} tasks/s ({count} tasks)")
        return result

    # -- 4. status --------------------------------------------------------------------------

    def phase_status(self) -> None:
        integrations = [i for i in self.integrations if i.takes("status")]
        for integ in integrations:
            if not integ.durable:  # its tasks live in the web process: submit them there
                port = self.web[integ.key][1]
                client = Client(port, integ.label)
                try:
                    ids = [client.submit() for _ in range(self.sizes.drain_tasks)]
                    self.round_trip(client, integ, [], 60, f"{integ.label}: status seeding")
                finally:
                    client.close()
                self.finished_ids[integ.key] = ids
            if integ.key not in self.finished_ids:
                raise StepError(f"{integ.label}: status needs the finished tasks of a drain")
        one: dict[str, tuple[str, Path]] = {}
        many: dict[str, tuple[str, Path]] = {}
        for integ in integrations:
            ids = self.finished_ids[integ.key]
            path = integ.status_path.format(id=ids[0])
            client = Client(self.web[integ.key][1], integ.label)
            try:
                status, data = client.request("GET", path)
            finally:
                client.close()
            if status != 200 or not integ.finished(data):
                raise StepError(f"{integ.label}: GET {path} answered {status}: {data!r}")
            script = write_script(self.tmp / f"status-{integ.key}.lua")
            one[integ.key] = (self.url(integ, path), script)
            paths = [integ.status_path.format(id=i) for i in ids]
            many_script = write_script(self.tmp / f"many-{integ.key}.lua", paths=paths)
            many[integ.key] = (self.url(integ, "/"), many_script)
        self.results["status_one"] = self.load("status, one task", one)
        if self.sizes.status_many:
            self.results["status_many"] = self.load("status, many tasks", many)

    # -- 5. memory of the web process -------------------------------------------------------

    def phase_memory(self) -> None:
        web: dict[str, Any] = {}
        count = self.sizes.memory_requests
        for integ in self.integrations:
            if not integ.takes("memory"):
                continue
            proc, port = self.start_web(integ, 1, "memory")
            try:
                children = [p for p in tree(proc.pid) if p != proc.pid]
                warm = Client(port, integ.label)
                try:
                    for _ in range(200):
                        warm.submit()
                finally:
                    warm.close()
                before = memory_kib(children)

                def submit_many(n: int, port: int = port, integ: Integration = integ) -> None:
                    client = Client(port, integ.label)
                    try:
                        for _ in range(n):
                            client.submit()
                    finally:
                        client.close()

                with ThreadPoolExecutor(4) as pool:
                    list(pool.map(submit_many, [count // 4] * 4))
                time.sleep(0.5)
                web[integ.key] = {"before": before, "after": memory_kib(children)}
                self.log(
                    f"{integ.label}: web process {before['rss'] / 1024:.0f} MiB -> "
                    f"{web[integ.key]['after']['rss'] / 1024:.0f} MiB after {count} submits"
                )
            finally:
                self.procs.stop(proc)
            if integ.durable:
                self.driver(integ, "purge")
        self.results.setdefault("memory", {})["web"] = web


class LineReader:
    """The JSON lines a driver subprocess prints, read one at a time with a timeout."""

    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        assert popen.stdout is not None
        self.popen = popen
        self.fd = popen.stdout.fileno()
        self.buffer = b""

    def next(self, timeout: float, what: str, procs: list[Proc] | None = None) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                tails = "\n".join(p.tail() for p in procs or [])
                raise StepError(f"{what}: nothing within {timeout:.0f} s\n{tails}")
            ready, _, _ = select.select([self.fd], [], [], min(left, 1.0))
            if ready:
                chunk = os.read(self.fd, 65536)
                if not chunk:
                    raise StepError(f"{what}: the driver exited without an answer")
                self.buffer += chunk
            for proc in procs or []:
                if proc.popen.poll() is not None:
                    raise StepError(f"{what}: a worker exited:\n{proc.tail()}")
        line, _, self.buffer = self.buffer.partition(b"\n")
        result: dict[str, Any] = json.loads(line)
        return result


def selected(names: list[str] | None, quick: bool) -> list[Integration]:
    chosen = [i for i in INTEGRATIONS if (i.in_quick or not quick)]
    if names:
        unknown = set(names) - {i.key for i in INTEGRATIONS}
        if unknown:
            raise SystemExit(f"unknown integration(s): {', '.join(sorted(unknown))}")
        chosen = [i for i in INTEGRATIONS if i.key in names]
    if "flask-tasks" not in {i.key for i in chosen}:
        chosen.insert(0, INTEGRATIONS[0])  # every ratio is taken against it
    return chosen


def log_to_stderr(started: float) -> Callable[[str], None]:
    def log(message: str) -> None:
        sys.stderr.write(f"[{time.time() - started:7.1f}s] {message}\n")
        sys.stderr.flush()

    return log
