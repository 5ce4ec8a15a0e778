"""Turn a run's numbers into ratios, the quick-mode printout, and docs/benchmarks.md + plots."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .integrations import INTEGRATIONS, REFERENCE, Integration, WorkerSetup

OFFICIAL = "official"
FRESH = "flask-tasks-fresh"


@dataclass(frozen=True)
class Metric:
    workload: str
    key: str  # path inside a row: ("rps", "median") ...
    label: str
    unit: str
    higher_is_better: bool

    def value(self, row: dict[str, Any]) -> float | None:
        node: Any = row
        for part in self.key.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return float(node) if isinstance(node, int | float) else None


WEB_WORKLOADS = {
    "submit": "HTTP submit",
    "status_one": "HTTP status poll, one finished task",
    "status_many": "HTTP status poll, 10,000 finished tasks at random",
}


def metrics() -> list[Metric]:
    out = []
    for workload, title in WEB_WORKLOADS.items():
        out += [
            Metric(workload, "rps.median", f"{title}: requests/s", "req/s", True),
            Metric(workload, "p50.median", f"{title}: p50 latency", "ms", False),
            Metric(workload, "p95.median", f"{title}: p95 latency", "ms", False),
            Metric(workload, "p99.median", f"{title}: p99 latency", "ms", False),
        ]
    out += [
        Metric("e2e", "p50", "End to end: p50", "ms", False),
        Metric("e2e", "p95", "End to end: p95", "ms", False),
        Metric("drain", "rate.median", "Worker drain: tasks/s", "tasks/s", True),
        Metric("progress", "added_ms.median", "Progress: time added", "ms", False),
        Metric("progress", "writes", "Progress: store writes", "writes", False),
    ]
    return out


ORDER = list(dict.fromkeys(k for i in INTEGRATIONS for k in (i.key, *(s.key for s in i.workers))))
"""Rows in the order of ``INTEGRATIONS`` (flask-tasks first), whatever order results.json has."""


def in_order(keys: Any) -> list[str]:
    """``keys`` (no repeats) in the order of ``INTEGRATIONS``."""
    rank = {key: n for n, key in enumerate(ORDER)}
    return sorted(dict.fromkeys(keys), key=lambda k: rank.get(k, len(rank)))


def rows_of(results: dict[str, Any], workload: str) -> dict[str, Any]:
    data = results.get(workload)
    if not isinstance(data, dict):
        return {}
    rank = {key: n for n, key in enumerate(ORDER)}
    return dict(sorted(data.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference == 0:
        return None
    return value / reference


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if unit in ("req/s", "tasks/s", "writes") or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _x(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The goals of issue 6, each with its figures and whether it is met."""
    out: list[dict[str, Any]] = []
    for metric in metrics():
        rows = rows_of(results, metric.workload)
        ours, theirs = rows.get(REFERENCE), rows.get(OFFICIAL)
        if ours is None or theirs is None:
            continue
        if metric.key == "writes":
            continue  # a count, not a speed: covered by the progress goal below
        r = ratio(metric.value(ours), metric.value(theirs))
        met = None if r is None else (r >= 1.0 if metric.higher_is_better else r <= 1.0)
        out.append(
            {
                "goal": f"{metric.label}: flask-tasks / official "
                + (">= 1.0x" if metric.higher_is_better else "<= 1.0x"),
                "value": _x(r),
                "met": met,
            }
        )
    # Peers: the other integrations (flask-tasks' own variant rows are not peers).
    durable = [i for i in INTEGRATIONS if i.durable and not i.key.startswith(REFERENCE)]
    for workload in ("status_one", "status_many"):
        rows = rows_of(results, workload)
        if REFERENCE not in rows:
            continue
        ours = rows[REFERENCE]["rps"]["median"]
        peers = {i.key: rows[i.key]["rps"]["median"] for i in durable if i.key in rows}
        if not peers:
            continue
        best = max(peers, key=lambda k: peers[k])
        out.append(
            {
                "goal": f"{WEB_WORKLOADS[workload]}: flask-tasks ahead of every durable peer "
                "on requests/s",
                "value": f"{ours:,.0f} vs best peer {best} {peers[best]:,.0f} "
                f"({ours / peers[best]:.2f}x)",
                "met": ours > peers[best],
            }
        )
    progress = rows_of(results, "progress")
    if REFERENCE in progress:
        ours = progress[REFERENCE]
        peers = {
            k: v
            for k, v in progress.items()
            if not k.startswith(REFERENCE) and _setup(k)[0].durable
        }
        if peers:
            worst_added = min(v["added_ms"]["median"] for v in peers.values())
            writes = [v["writes"] for v in peers.values() if "writes" in v]
            ahead = ours["added_ms"]["median"] < worst_added and (
                "writes" not in ours or not writes or ours["writes"] < min(writes)
            )
            out.append(
                {
                    "goal": "Progress: flask-tasks ahead of every durable peer (time added and "
                    "store writes)",
                    "value": f"{ours['added_ms']['median']:.1f} ms, {ours.get('writes', '?')} "
                    f"writes vs best peer {worst_added:.1f} ms, "
                    f"{min(writes) if writes else '?'} writes",
                    "met": ahead,
                }
            )
    e2e = rows_of(results, "e2e")
    if REFERENCE in e2e:
        p50 = e2e[REFERENCE]["p50"]
        out.append(
            {
                "goal": "End to end p50 under 5 ms on Redis",
                "value": f"{p50:.2f} ms",
                "met": p50 < 5,
            },
        )
    if FRESH in e2e:
        p50 = e2e[FRESH]["p50"]
        out.append(
            {
                "goal": "End to end p50 under 5 ms on Redis, without the status view's cache "
                "of unfinished records (`TASKS_PROGRESS_INTERVAL = 0` in the web app)",
                "value": f"{p50:.2f} ms",
                "met": p50 < 5,
            },
        )
    return out


def _setup(key: str) -> tuple[Integration, WorkerSetup | None]:
    for integ in INTEGRATIONS:
        if integ.key == key:
            return integ, None
        for setup in integ.workers:
            if setup.key == key:
                return integ, setup
    raise KeyError(key)


def label(key: str) -> str:
    integ, setup = _setup(key)
    return setup.label if setup is not None else integ.label


def quick_table(results: dict[str, Any]) -> str:
    """The ratios of a quick run, flask-tasks against the official pattern, as text."""
    lines = [
        "flask-tasks vs Flask's official Celery pattern (quick mode: small sizes, a noisy "
        "machine; nothing gates on these)",
        f"{'metric':54} {'flask-tasks':>12} {'official':>12} {'ratio':>8}  goal",
    ]
    for metric in metrics():
        rows = rows_of(results, metric.workload)
        if REFERENCE not in rows or OFFICIAL not in rows:
            continue
        a, b = metric.value(rows[REFERENCE]), metric.value(rows[OFFICIAL])
        r = ratio(a, b)
        goal = ">= 1.0x" if metric.higher_is_better else "<= 1.0x"
        if metric.key == "writes":
            goal = "fewer"
        flag = ""
        if r is not None and metric.key != "writes":
            flag = "ok" if (r >= 1.0 if metric.higher_is_better else r <= 1.0) else "MISSED"
        lines.append(
            f"{metric.label:54} {_fmt(a, metric.unit):>12} {_fmt(b, metric.unit):>12} "
            f"{_x(r):>8}  {goal} {flag}"
        )
    e2e = rows_of(results, "e2e")
    if FRESH in e2e and OFFICIAL in e2e:
        a, b = e2e[FRESH]["p50"], e2e[OFFICIAL]["p50"]
        r = ratio(a, b)
        lines.append(
            f"{'End to end: p50, no status cache for unfinished tasks':54} {_fmt(a):>12} "
            f"{_fmt(b):>12} {_x(r):>8}  <= 1.0x {'ok' if r is not None and r <= 1 else 'MISSED'}"
        )
    for key in (REFERENCE, FRESH):
        if key in e2e:
            p50 = e2e[key]["p50"]
            lines.append(
                f"end to end p50 < 5 ms ({label(key)}): {p50:.2f} ms "
                f"{'ok' if p50 < 5 else 'MISSED'}"
            )
    return "\n".join(lines)


# -- the report ---------------------------------------------------------------------------


def _plots(results: dict[str, Any], folder: Path) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: dict[str, str] = {}

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(folder / name, dpi=110)
        plt.close(fig)
        made[name.removesuffix(".png")] = name

    for workload, title in WEB_WORKLOADS.items():
        rows = rows_of(results, workload)
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for key, row in rows.items():
            points = sorted((float(p), v) for p, v in row["cdf"].items())
            ax.plot([v for _, v in points], [p for p, _ in points], label=label(key))
        ax.set_xscale("log")
        ax.set_xlabel("latency (ms, log scale)")
        ax.set_ylabel("percentile")
        ax.set_title(f"{title}: latency distribution (wrk, median of rounds)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, f"{workload.replace('_', '-')}-latency.png")
        _bars(
            plt,
            save,
            rows,
            lambda r: r["rps"],
            f"{title}: requests/s (median, min-max)",
            "requests/s",
            f"{workload.replace('_', '-')}-throughput.png",
        )
    e2e = rows_of(results, "e2e")
    if e2e:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for key, row in e2e.items():
            ordered = sorted(row["samples"])
            n = len(ordered)
            ax.plot(ordered, [100 * (i + 0.5) / n for i in range(n)], label=label(key))
        ax.set_xscale("log")
        ax.set_xlabel("submit to finished, observed by polling (ms, log scale)")
        ax.set_ylabel("percentile")
        ax.set_title("End to end: latency distribution")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        save(fig, "e2e-latency.png")
    drain = rows_of(results, "drain")
    if drain:
        _bars(
            plt,
            save,
            drain,
            lambda r: r["rate"],
            "Worker drain: tasks/s (median, min-max)",
            "tasks/s",
            "drain-throughput.png",
        )
    progress = rows_of(results, "progress")
    if progress:
        _bars(
            plt,
            save,
            progress,
            lambda r: r["added_ms"],
            "Progress: time added to a 10,000-call loop (median, min-max)",
            "ms added (log scale)",
            "progress-cost.png",
            log=True,
        )
    memory = rows_of(results, "memory")
    if memory:
        series = {
            "worker, idle": memory.get("worker_idle", {}),
            "worker, after the drain": memory.get("worker_after_drain", {}),
            "web process, started": {k: v["before"] for k, v in memory.get("web", {}).items()},
            "web process, after 10,000 submits": {
                k: v["after"] for k, v in memory.get("web", {}).items()
            },
        }
        keys = in_order(k for s in series.values() for k in s)
        fig, ax = plt.subplots(figsize=(9, 0.5 * len(keys) * len(series) / 2 + 2))
        height = 0.8 / len(series)
        for n, (name, values) in enumerate(series.items()):
            ys = [i + n * height for i in range(len(keys))]
            xs = [values.get(k, {}).get("rss", 0) / 1024 for k in keys]
            ax.barh(ys, xs, height=height, label=name)
        ax.set_yticks([i + 0.4 - height / 2 for i in range(len(keys))])
        ax.set_yticklabels([label(k) for k in keys], fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("RSS (MiB; a worker: all its processes)")
        ax.set_title("Memory")
        ax.legend(fontsize=8)
        ax.grid(True, axis="x", alpha=0.3)
        save(fig, "memory.png")
    return made


def _bars(
    plt: Any,
    save: Any,
    rows: dict[str, Any],
    pick: Any,
    title: str,
    xlabel: str,
    name: str,
    log: bool = False,
) -> None:
    keys = list(rows)
    stats = [pick(rows[k]) for k in keys]
    medians = [s["median"] for s in stats]
    low = [max(s["median"] - s["min"], 0) for s in stats]
    high = [max(s["max"] - s["median"], 0) for s in stats]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(keys) + 1.6))
    colors = ["#c0392b" if k == REFERENCE else "#5d6d7e" for k in keys]
    ax.barh(range(len(keys)), medians, xerr=[low, high], color=colors, capsize=3)
    ax.set_yticks(range(len(keys)))
    ax.set_yticklabels([label(k) for k in keys], fontsize=8)
    ax.invert_yaxis()
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(True, axis="x", alpha=0.3)
    save(fig, name)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _web_table(rows: dict[str, Any]) -> str:
    ref = rows.get(REFERENCE)
    body = []
    for key, row in rows.items():
        cells = [label(key)]
        for metric in ("rps", "p50", "p95", "p99"):
            s = row[metric]
            cells.append(f"{_fmt(s['median'])} ({_fmt(s['min'])}-{_fmt(s['max'])})")
        r_rps = ratio(row["rps"]["median"], ref["rps"]["median"]) if ref else None
        r_p50 = ratio(row["p50"]["median"], ref["p50"]["median"]) if ref else None
        r_p99 = ratio(row["p99"]["median"], ref["p99"]["median"]) if ref else None
        cells += [_x(r_rps), _x(r_p50), _x(r_p99)]
        body.append(cells)
    return _table(
        [
            "integration",
            "requests/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "req/s ÷ flask-tasks",
            "p50 ÷ flask-tasks",
            "p99 ÷ flask-tasks",
        ],
        body,
    )


def write_report(results: dict[str, Any], meta: dict[str, Any], docs: Path) -> Path:
    folder = docs / "benchmarks"
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    plots = _plots(results, folder)
    (folder / "results.json").write_text(
        json.dumps({"meta": meta, "results": results}, indent=1) + "\n"
    )
    page = render(results, meta, plots)
    analysis = Path(__file__).with_name("analysis.md")
    if analysis.exists():
        page += "\n" + analysis.read_text()
    path = docs / "benchmarks.md"
    path.write_text(page)
    return path


def _img(plots: dict[str, str], name: str, alt: str) -> str:
    return f"![{alt}](benchmarks/{plots[name]})" if name in plots else ""


def render(results: dict[str, Any], meta: dict[str, Any], plots: dict[str, str]) -> str:
    out: list[str] = []
    add = out.append
    minutes = results.get("duration_s", 0) / 60
    add("# Benchmarks: flask-tasks side by side with the other Flask task integrations\n")
    add(
        "Generated by `make bench` (`python -m benchmarks.suite`); do not edit by hand: every "
        "run rewrites this page, its plots in `docs/benchmarks/` and the raw numbers in "
        "[`docs/benchmarks/results.json`](benchmarks/results.json).\n"
    )
    add(
        f"This run: {meta['date']}, {minutes:.0f} minutes, on the machine below, everything "
        "(Redis, gunicorn, workers, wrk) on that one machine. The machine is shared, so "
        "figures are noisy: compare the **ratios** (each row against flask-tasks, measured in "
        "the same run, rounds interleaved) rather than absolute numbers. The full run takes "
        "about 25 minutes on 2 cores; `make bench-quick` (flask-tasks and "
        "the official pattern, small sizes, under 2 minutes) prints the ratios and writes "
        "nothing.\n"
    )
    add("## Goals (issue 6)\n")
    add(
        _table(
            ["goal", "this run", "met"],
            [
                [g["goal"], g["value"], {True: "yes", False: "**no**", None: "n/a"}[g["met"]]]
                for g in goals(results)
            ],
        )
        + "\n"
    )
    add(
        "Why a goal is not met, where the time goes (profiles) and what flask-tasks changed "
        "or defaults to because of it: [Analysis](#analysis), at the end.\n"
    )
    add("## Machine and versions\n")
    add(_table(["", ""], [[k, str(v)] for k, v in meta["machine"].items()]) + "\n")
    add(_table(["package", "version"], [[k, v] for k, v in meta["versions"].items()]) + "\n")
    add("## The integrations and how each is set up\n")
    add(
        "Every integration runs the same no-op task, on the same Redis (database 12, emptied "
        "before and after), behind the same server: gunicorn, `gthread` workers, 2 processes "
        "of 4 threads (Flask-Executor: 1 process of 8 threads, because its tasks live in the "
        "process that took the request). Each app module is in `benchmarks/suite/apps/`; "
        'each exposes `POST /submit` (enqueue one task, answer `202 {"id": ...}`) and a '
        "status route. Where a default is unfair to a peer, a tuned row is shown too, and "
        "labelled so.\n"
    )
    rows = []
    for integ in INTEGRATIONS:
        rows.append(
            [
                f"**{integ.label}**",
                integ.setup,
                f"`GET {integ.status_path.replace('{id}', '<id>')}`: {integ.status_note}",
                integ.progress or f"n/a: {integ.no_progress_reason}",
            ]
        )
        for setup in integ.workers:
            rows.append([f"↳ {setup.label}", setup.setup, "", ""])
    add(_table(["integration / worker row", "setup", "status route", "progress"], rows) + "\n")
    add(
        "Notes:\n\n"
        "- **Flask-Executor is a reference point, not a durable queue**: its tasks run on "
        "threads of the web process, are lost when that process exits and cannot be seen "
        "from another one; there is no broker, no worker and no retry.\n"
        "- Where a peer keeps results for less than the run lasts (RQ: 500 s, Dramatiq: "
        "10 min), they are kept 1 h, so the status workload, which polls the tasks of the "
        "drain, finds them; how long a result is kept does not change what writing it costs.\n"
        "- The flask-rq default row (a new `flask` subprocess per job) drains "
        f"{_drain_n(results, 'flask-rq-default')} tasks instead of 10,000, once: at its "
        "rate 10,000 would take most of the run.\n"
    )
    # -- workloads
    add("## 1. HTTP submit\n")
    add(
        "`POST /submit` enqueues one no-op task (no worker running; queues purged after). wrk "
        f"on this machine, {meta['sizes']['threads']} threads, {meta['sizes']['connections']} "
        f"connections, {meta['sizes']['rounds']} rounds of {meta['sizes']['seconds']:.0f} s "
        "per integration, interleaved; median over rounds (min-max in brackets).\n"
    )
    _web_section(add, results, plots, "submit")
    add("## 2. HTTP status poll\n")
    add(
        "The integration's status route: flask-tasks' `GET /tasks/<id>`, the route a user "
        "would write from their docs for the others (see the setup table). First one finished "
        "task polled over and over, then the 10,000 finished tasks of the last drain, one at "
        "random per request. **flask-tasks caches the records it read in each web process** "
        "(a finished one for 10 s, at most 4,096): the first case is served from that cache, "
        "the second reads the store on most requests until the cache has seen many of the "
        "ids.\n"
    )
    add("### One finished task\n")
    _web_section(add, results, plots, "status_one")
    if "status_many" in results:
        add("### 10,000 finished tasks at random\n")
        _web_section(add, results, plots, "status_many")
    add("## 3. End to end\n")
    add(
        "One client, sequential: `POST /submit`, then `GET` the status route back to back on "
        "the same keep-alive connection until it says finished; the time from sending the "
        'submit to reading the first "finished" answer. Workers running as in the drain '
        "(2 processes), after 5 warm-up tasks.\n"
    )
    e2e = rows_of(results, "e2e")
    if e2e:
        ref = e2e.get(REFERENCE)
        body = []
        for key, row in e2e.items():
            body.append(
                [
                    label(key),
                    str(len(row["samples"])),
                    _fmt(row["p50"]),
                    _fmt(row["p95"]),
                    _fmt(row["p99"]),
                    _fmt(row["polls_median"]),
                    _x(ratio(row["p50"], ref["p50"])) if ref else "n/a",
                    _x(ratio(row["p95"], ref["p95"])) if ref else "n/a",
                ]
            )
        add(
            _table(
                [
                    "worker row",
                    "tasks",
                    "p50 ms",
                    "p95 ms",
                    "p99 ms",
                    "polls (median)",
                    "p50 ÷ flask-tasks",
                    "p95 ÷ flask-tasks",
                ],
                body,
            )
            + "\n"
        )
        add(_img(plots, "e2e-latency", "end-to-end latency distribution") + "\n")
    add("## 4. Worker drain\n")
    add(
        f"{meta['sizes']['drain_tasks']:,} no-op tasks queued through each integration's "
        "Python API with no worker running, then the workers start (2 processes); tasks/s "
        "from the first finished task seen to the last (so a worker's start-up does not "
        "count), finished meaning its result or record is written. Runs of all rows "
        "interleaved; median (min-max) of "
        f"{meta['sizes']['drain_runs']} runs. Flask-Executor: the tasks submitted to its 2 "
        "threads at once, timed to the last one.\n"
    )
    drain = rows_of(results, "drain")
    if drain:
        ref = drain.get(REFERENCE)
        body = []
        for key, row in drain.items():
            s = row["rate"]
            body.append(
                [
                    label(key),
                    f"{row['runs'][0]['n']:,} x {len(row['runs'])}",
                    f"{_fmt(s['median'], 'tasks/s')} ({_fmt(s['min'], 'tasks/s')}-"
                    f"{_fmt(s['max'], 'tasks/s')})",
                    _x(ratio(s["median"], ref["rate"]["median"])) if ref else "n/a",
                ]
            )
        add(_table(["worker row", "tasks x runs", "tasks/s", "÷ flask-tasks"], body) + "\n")
        add(_img(plots, "drain-throughput", "drain throughput") + "\n")
    add("## 5. Progress\n")
    add(
        f"A task calls the integration's progress API {meta['sizes']['progress_calls']:,} "
        "times in a loop; its twin runs the same loop calling an empty function instead. "
        "The task times its own loop; *time added* is the difference, median (min-max) of "
        f"{meta['sizes']['progress_repeats']} pairs. *Store writes* are counted in a separate "
        "run from Redis' own command log (`MONITOR`, database 12): round trips that change "
        "data and name the task's id, with the plain twin's subtracted (see "
        "`benchmarks/suite/redismon.py`). SQLite keeps no such log, so the embedded row has "
        "no count (its throttle is the same code). Dramatiq and Flask-Executor have no "
        "progress API and no row.\n"
    )
    progress = rows_of(results, "progress")
    if progress:
        ref = progress.get(REFERENCE)
        body = []
        for key, row in progress.items():
            s = row["added_ms"]
            body.append(
                [
                    label(key),
                    f"{_fmt(s['median'])} ({_fmt(s['min'])}-{_fmt(s['max'])})",
                    _fmt(row["loop_ms"]["median"]),
                    _fmt(row["plain_ms"]["median"]),
                    _fmt(row.get("writes"), "writes"),
                    _x(ratio(s["median"], ref["added_ms"]["median"])) if ref else "n/a",
                ]
            )
        add(
            _table(
                [
                    "worker row",
                    "time added, ms",
                    "loop with progress, ms",
                    "loop without, ms",
                    "store writes",
                    "time added ÷ flask-tasks",
                ],
                body,
            )
            + "\n"
        )
        add(_img(plots, "progress-cost", "progress cost") + "\n")
    add("## 6. Memory\n")
    add(
        "Resident memory (RSS; PSS, which shares copy-on-write pages out fairly, in "
        "brackets), in MiB. A worker is all its processes (Celery: the main process and its "
        "2 pool processes; RQ: the 2 workers and any work horse alive; Dramatiq: its main "
        "and 2 worker processes), idle after its first task, and again after the drain. "
        "The web process is a fresh gunicorn with one worker process, measured after 200 "
        f"warm-up submits and after {meta['sizes']['memory_requests']:,} more (no worker "
        "running; for Flask-Executor they run, in that process).\n"
    )
    memory = rows_of(results, "memory")
    if memory:
        body = []
        keys = in_order(
            [
                *memory.get("worker_idle", {}),
                *memory.get("worker_after_drain", {}),
                *memory.get("web", {}),
            ]
        )
        for key in keys:

            def cell(entry: dict[str, int] | None) -> str:
                if not entry:
                    return "n/a"
                return f"{entry['rss'] / 1024:.0f} ({entry['pss'] / 1024:.0f})"

            web = memory.get("web", {}).get(key, {})
            body.append(
                [
                    label(key),
                    cell(memory.get("worker_idle", {}).get(key)),
                    cell(memory.get("worker_after_drain", {}).get(key)),
                    cell(web.get("before")),
                    cell(web.get("after")),
                ]
            )
        add(
            _table(
                [
                    "row",
                    "worker, idle",
                    "worker, after the drain",
                    "web process, started",
                    "web process, after the submits",
                ],
                body,
            )
            + "\n"
        )
        add(_img(plots, "memory", "memory") + "\n")
    return "\n".join(out)


def _drain_n(results: dict[str, Any], key: str) -> str:
    row = rows_of(results, "drain").get(key)
    return f"{row['runs'][0]['n']:,}" if row else "fewer"


def _web_section(add: Any, results: dict[str, Any], plots: dict[str, str], workload: str) -> None:
    rows = rows_of(results, workload)
    if not rows:
        add("(not run)\n")
        return
    add(_web_table(rows) + "\n")
    stem = workload.replace("_", "-")
    add(
        _img(plots, f"{stem}-throughput", f"{workload} throughput")
        + "\n\n"
        + _img(plots, f"{stem}-latency", f"{workload} latency")
        + "\n"
    )
