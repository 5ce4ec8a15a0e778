"""What the fault tests share: worker processes of apps.faults, a private Redis server,
waiting on conditions, and counting task runs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from apps import faults
from conftest import REQUIRE, close_app
from flask_tasks.state import TaskRecord, TaskState
from workers import Process, flask, subprocess_env

APP = "apps.faults:create_app"
REDIS_SERVER = "/usr/bin/redis-server"

pytestmark = pytest.mark.faults


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PrivateRedis:
    """A redis-server of the test's own, on a free port, persisting every write (AOF)."""

    def __init__(self, directory: Path) -> None:
        if not os.path.exists(REDIS_SERVER):
            pytest.skip(f"{REDIS_SERVER} is not installed")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(self.answers, 20, f"redis-server on port {self.port}")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGKILL) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def private_redis(directory: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


class Faults:
    """One test's setup: the env of its workers, its in-process app, its run counters."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp_path = tmp_path
        self.monkeypatch = monkeypatch
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        self.apps: list[Flask] = []
        self.workers: list[Process] = []
        self.env: dict[str, str] = {}

    def configure(self, broker: str, **config: Any) -> Flask:
        """Set the workers' environment and return the app this process sends with."""
        REQUIRE[broker]()
        values = {
            "FT_BROKER": broker,
            "FT_QUEUE": f"test-{uuid.uuid4().hex[:12]}",
            "FT_INSTANCE": str(self.tmp_path / "instance"),
            "FAULTS_RUNS": str(self.runs),
            "FAULTS_CONFIG": json.dumps(config),
        }
        for key, value in values.items():
            self.monkeypatch.setenv(key, value)
        self.env = subprocess_env(**values)
        app = faults.create_app()
        self.apps.append(app)
        return app

    def worker(self, *args: str, concurrency: int = 2) -> Process:
        argv = flask("--app", APP, "tasks", "worker", "-l", "info", "-c", str(concurrency))
        # A node name of its own: a worker killed here leaves its exclusive pidbox queue on
        # RabbitMQ until the broker notices the dead connection, and a later worker under
        # the same name (celery@<host>) would be refused it.
        node = ["-n", f"faults-{uuid.uuid4().hex[:8]}@%h"]
        proc = Process([*argv, *node, "--without-mingle", "--without-gossip", *args], self.env)
        self.workers.append(proc)
        proc.wait_for("ready.", timeout=60)
        return proc

    def runs_of(self, key: str) -> list[int]:
        path = self.runs / key
        if not path.exists():
            return []
        return [int(line) for line in path.read_text().split()]

    def close(self) -> None:
        for proc in self.workers:
            proc.stop(signal.SIGKILL)
        for app in self.apps:
            close_app(app)


@pytest.fixture
def kit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Faults]:
    setup = Faults(tmp_path, monkeypatch)
    try:
        yield setup
    finally:
        setup.close()


def records(app: Flask, ids: list[str]) -> dict[str, TaskRecord | None]:
    store = app.extensions["tasks"].store
    return {task_id: store.get(task_id) for task_id in ids}


def all_in(app: Flask, ids: list[str], state: TaskState) -> bool:
    return all(r is not None and r.state is state for r in records(app, ids).values())


def summary(app: Flask, ids: list[str]) -> str:
    counts: dict[str, int] = {}
    for record in records(app, ids).values():
        name = "missing" if record is None else record.state.value
        counts[name] = counts.get(name, 0) + 1
    return json.dumps(counts)


def kill_group(proc: Process) -> None:
    """SIGKILL a worker and every process of its group (its pool children)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.proc.pid, signal.SIGKILL)
    proc.proc.wait(10)
