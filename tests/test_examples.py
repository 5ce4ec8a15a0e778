"""Each example runs with its documented command."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from test_devworker import free_port
from workers import ROOT, Process, flask, subprocess_env

EXAMPLES = ROOT / "examples"


def request(url: str, data: bytes | None = None) -> Any:
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, timeout=10) as response:
        return json.load(response)


def wait_ready(base: str, task_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = request(f"{base}/result/{task_id}")
        if body["ready"]:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{task_id} not ready after {timeout}s")


def run_example(folder: Path, app: str) -> tuple[Process, str]:
    port = free_port()
    proc = Process(flask("--app", app, "run", "--port", str(port)), subprocess_env(), cwd=folder)
    proc.wait_for("Running on")
    return proc, f"http://127.0.0.1:{port}"


def test_quickstart_runs_on_the_embedded_default() -> None:
    folder = EXAMPLES / "quickstart"
    proc, base = run_example(folder, "quickstart")
    try:
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert "Add in the background" in page
        added = request(f"{base}/add", b"a=2&b=40")["result_id"]
        counted = request(f"{base}/count", b"seconds=1")["result_id"]
        assert wait_ready(base, added)["value"] == 42
        assert wait_ready(base, counted)["value"] == {"counted": 1, "app": "quickstart"}
    finally:
        proc.stop()
    assert "flask-tasks: development worker" in proc.output
    assert (folder / "instance" / "tasks.sqlite3").exists()
