"""``python -m benchmarks.suite [--quick]``: see ``benchmarks/suite/__init__.py``."""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

import redis

from . import report
from .procs import StepError
from .runner import FULL, QUICK, REDIS_URL, ROOT, Suite, log_to_stderr, selected

WORKLOADS = ["submit", "e2e", "progress", "drain", "status", "memory"]
PACKAGES = [
    "flask-tasks",
    "flask",
    "werkzeug",
    "celery",
    "kombu",
    "redis",
    "hiredis",
    "sqlalchemy",
    "gunicorn",
    "flask-celeryext",
    "flask-rq",
    "rq",
    "flask-dramatiq",
    "dramatiq",
    "flask-executor",
    "matplotlib",
]


def _machine() -> dict[str, Any]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    os_name = platform.platform()
    if Path("/etc/os-release").exists():
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = f"{line.split('=', 1)[1].strip(chr(34))}, Linux {platform.release()}"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        redis_version = client.info("server")["redis_version"]
    finally:
        client.close()
    wrk = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "CPU": cpu,
        "cores": os.cpu_count(),
        "RAM": f"{mem_kib / 1024 / 1024:.1f} GiB",
        "OS": os_name,
        "Python": platform.python_version(),
        "Redis server": redis_version,
        "wrk": wrk.split(" [")[0],
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def _versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "src"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    if commit:
        out["flask-tasks"] += f" (commit {commit}{', src/ modified' if dirty else ''})"
    return out


def _preflight(quick: bool) -> None:
    if shutil.which("wrk") is None:
        raise SystemExit(
            "wrk is not installed: `apt-get install -y wrk` (make bench does it when root)."
        )
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"Redis is not reachable at {REDIS_URL}: {exc}") from exc
    finally:
        client.close()
    if not quick:
        missing = [p for p in PACKAGES if _missing(p)]
        if missing:
            raise SystemExit(
                f"missing: {', '.join(missing)}. Run `make bench`, or "
                "`.venv/bin/python -m pip install -r benchmarks/requirements.txt`."
            )


def _missing(name: str) -> bool:
    try:
        importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return True
    return False


def _terminate(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the suite's cleanup


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite",
        description="flask-tasks side by side with the other Flask task integrations.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="flask-tasks and the official pattern only, small sizes; print the ratios, "
        "write nothing (under 2 minutes)",
    )
    parser.add_argument("--integrations", help="comma-separated keys (default: all)")
    parser.add_argument(
        "--workloads", help=f"default: {','.join(WORKLOADS)} (quick: all but memory)"
    )
    parser.add_argument(
        "--docs", type=Path, default=ROOT / "docs", help="where benchmarks.md goes"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="print the ratios only, write nothing"
    )
    parser.add_argument(
        "--set",
        default="",
        metavar="NAME=VALUE,...",
        help="override sizes, e.g. seconds=2,drain_tasks=500 (for trying the suite out)",
    )
    parser.add_argument(
        "--render",
        action="store_true",
        help="rewrite benchmarks.md and its plots from the last run's results.json "
        "(after editing benchmarks/suite/analysis.md), without running anything",
    )
    options = parser.parse_args()
    if options.render:
        saved = json.loads((options.docs / "benchmarks" / "results.json").read_text())
        print(report.write_report(saved["results"], saved["meta"], options.docs))
        return 0
    _preflight(options.quick)
    signal.signal(signal.SIGTERM, _terminate)
    sizes = QUICK if options.quick else FULL
    if options.set:
        changes = dict(item.split("=", 1) for item in options.set.split(","))
        fields = sizes.__dict__
        unknown = set(changes) - set(fields)
        if unknown:
            raise SystemExit(f"unknown size(s): {', '.join(sorted(unknown))}")
        sizes = dataclasses.replace(
            sizes,
            **{
                k: type(fields[k])(v == "1" if isinstance(fields[k], bool) else v)
                for k, v in changes.items()
            },
        )
    integrations = selected(
        options.integrations.split(",") if options.integrations else None, options.quick
    )
    if options.workloads:
        workloads = set(options.workloads.split(","))
    else:
        workloads = set(WORKLOADS) - ({"memory"} if options.quick else set())
    if "status" in workloads:
        workloads.add("drain")  # the status workload polls the drain's finished tasks
    started = time.time()
    log = log_to_stderr(started)
    log(
        f"{'quick' if options.quick else 'full'} run: {', '.join(i.key for i in integrations)};"
        f" workloads: {', '.join(w for w in WORKLOADS if w in workloads)}"
    )
    meta: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.suite" + (" --quick" if options.quick else ""),
        "machine": _machine(),
        "versions": _versions(),
        "sizes": sizes.__dict__,
    }
    suite = Suite(sizes=sizes, integrations=integrations, workloads=workloads, log=log)
    try:
        results = suite.run()
    except StepError as exc:
        log(f"FAILED: {exc}")
        return 1
    meta["machine"]["load average at end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(report.quick_table(results))
    if options.quick or options.no_report:
        if os.environ.get("BENCH_JSON"):
            print(json.dumps(results))
        return 0
    path = report.write_report(results, meta, options.docs)
    log(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
