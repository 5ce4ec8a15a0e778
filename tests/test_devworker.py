"""The in-process worker that `flask run` starts on the embedded broker."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest

from apps import factory
from conftest import AppFactory
from flask_tasks import Tasks
from flask_tasks._devworker import DevWorker, _started
from workers import Process, flask, subprocess_env

APP = "apps.factory:create_app"
BANNER = "flask-tasks: development worker"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


def wait_result(base: str, task_id: str, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = get(f"{base}/result/{task_id}")
        if body["ready"]:
            return body["value"]
        time.sleep(0.05)
    raise AssertionError(f"task {task_id} did not finish within {timeout}s")


def flask_run(tmp_path: Path, *options: str, **env: str) -> tuple[Process, str]:
    port = free_port()
    variables = subprocess_env(
        FT_BROKER=env.pop("FT_BROKER", "embedded"),
        FT_QUEUE=f"test-{uuid.uuid4().hex[:12]}",
        FT_INSTANCE=str(tmp_path / "instance"),
        **env,
    )
    proc = Process(flask("--app", APP, *options, "run", "--port", str(port)), variables)
    proc.wait_for("Running on")
    return proc, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("reload", [True, False], ids=["reloader", "no-reloader"])
def test_flask_run_starts_exactly_one_dev_worker(tmp_path: Path, reload: bool) -> None:
    options = ["--debug"] if reload else []
    proc, base = flask_run(tmp_path, *options) if reload else flask_run(tmp_path)
    try:
        proc.wait_for(BANNER)
        result = wait_result(base, get(f"{base}/where")["id"])
        time.sleep(0.5)  # a second worker would have announced itself by now
    finally:
        proc.stop()
    assert proc.output.count(BANNER) == 1, proc.output
    assert result["has_app_context"]
    if reload:
        # the reloader's watcher is the process we started; the server is its child
        assert result["pid"] != proc.proc.pid
    else:
        assert result["pid"] == proc.proc.pid


def test_flask_run_sums_with_the_official_add_route(tmp_path: Path) -> None:
    proc, base = flask_run(tmp_path)
    try:
        request = urllib.request.Request(f"{base}/add", data=b"a=2&b=3", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            task_id = json.load(response)["id"]
        assert wait_result(base, task_id) == 5
    finally:
        proc.stop()


def test_no_dev_worker_when_disabled_or_with_a_real_broker(tmp_path: Path) -> None:
    proc, _ = flask_run(tmp_path, FLASK_TASKS_DEV_WORKER="false")
    proc.stop()
    assert BANNER not in proc.output
    proc, _ = flask_run(tmp_path, FT_BROKER="redis")
    proc.stop()
    assert BANNER not in proc.output


def test_true_starts_on_the_first_request_outside_flask_run(make_app: AppFactory) -> None:
    app = make_app(TASKS_DEV_WORKER=True)
    ext = Tasks(app)

    @ext.task
    def ping() -> str:
        return "pong"

    @app.get("/")
    def index() -> str:
        return "ok"

    celery_app = app.extensions["celery"]
    assert id(celery_app) not in _started
    assert app.test_client().get("/").status_code == 200
    worker: DevWorker = _started[id(celery_app)]
    try:
        with app.app_context():
            assert ping.delay().get(timeout=20, interval=0.01) == "pong"
        app.test_client().get("/")
        assert _started[id(celery_app)] is worker
    finally:
        worker.stop()
        del _started[id(celery_app)]


def test_eager_apps_never_start_a_dev_worker(make_app: AppFactory) -> None:
    app = make_app(TASKS_DEV_WORKER=True, CELERY_TASK_ALWAYS_EAGER=True)
    factory.tasks.init_app(app)
    app.test_client().get("/")
    assert id(app.extensions["celery"]) not in _started
