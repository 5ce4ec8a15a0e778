"""The soak harness (benchmarks/soak, `make soak`) at a tiny scale, so that it cannot rot.

It measures nothing here: the bounds are loose, only the checks' plumbing is tested.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import require_redis
from workers import ROOT, subprocess_env

LOOSE = ["--p99-ms", "10000", "--embedded-p99-ms", "10000"]


def run_soak(tmp_path: Path, *args: str, passes: bool = True) -> list[dict[str, object]]:
    out = tmp_path / "soak.json"
    argv = [sys.executable, "-m", "benchmarks.soak", "--quick", *LOOSE, "--json", str(out)]
    done = subprocess.run(
        [*argv, *args],
        cwd=ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == (0 if passes else 1), done.stdout + done.stderr
    assert ("| result | **pass** |" in done.stdout) is passes, done.stdout
    results: list[dict[str, object]] = json.loads(out.read_text())
    return results


def test_soak_quick_redis(tmp_path: Path) -> None:
    require_redis()
    (result,) = run_soak(tmp_path, "--only", "redis", "--tasks", "200", "--pollers", "10")
    assert result["failures"] == []
    assert result["counts"] == {
        "queued": 0, "running": 0, "retrying": 0, "succeeded": 200, "failed": 0, "cancelled": 0
    }  # fmt: skip
    assert result["raw_counts"] == {"record keys": 200, "time index": 200}
    assert result["status_requests"] > 0


def test_soak_quick_embedded(tmp_path: Path) -> None:
    args = ["--only", "embedded", "--embedded-tasks", "100", "--embedded-pollers", "10"]
    (result,) = run_soak(tmp_path, *args)
    assert result["failures"] == []
    assert result["raw_counts"] == {"SQL rows": 100}
    assert result["status_requests"] > 0


def test_soak_fails_loudly_past_a_bound(tmp_path: Path) -> None:
    args = ["--only", "embedded", "--embedded-tasks", "30", "--embedded-pollers", "2"]
    args += ["--embedded-p99-ms", "0", "--worker-rss-mb", "-1"]  # later flags win
    (result,) = run_soak(tmp_path, *args, passes=False)
    failures = str(result["failures"])
    assert "status p99" in failures
    assert "grew" in failures
    assert result["raw_counts"] == {"SQL rows": 30}
