"""The seed examples (examples/seed00N_*) run with the commands their READMEs give.

Each test starts an example as a user would (``flask --app ... run`` in its folder, on a
free port, and ``celery -A ...`` for the Celery entry points), with an empty instance
folder of its own (``INSTANCE_PATH``, which every example reads), then drives its routes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_devworker import free_port
from workers import ROOT, Process, celery, flask, subprocess_env

EXAMPLES = ROOT / "examples"
FINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the caller reads the redirect itself


_opener = urllib.request.build_opener(_NoRedirect)


def call(
    url: str,
    method: str = "GET",
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
) -> Reply:
    """One HTTP request; redirects and error statuses are returned, not followed or raised."""
    if form is not None:
        body = urllib.parse.urlencode(form).encode()
    if body is None and method == "POST":
        body = b""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=10) as response:
            return Reply(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        with error:
            return Reply(error.code, dict(error.headers), error.read())


def wait_json(url: str, done: Callable[[Any], bool], timeout: float = 20) -> Any:
    """Poll a JSON URL until ``done(body)``; return that body."""
    deadline = time.monotonic() + timeout
    body = None
    while time.monotonic() < deadline:
        reply = call(url)
        if reply.status == 200:
            body = reply.json()
            if done(body):
                return body
        time.sleep(0.05)
    raise AssertionError(f"{url}: not done within {timeout}s; last answer: {body!r}")


def wait_record(base: str, task_id: str, timeout: float = 20) -> Any:
    """The task's record from flask-tasks' API, once final."""
    return wait_json(f"{base}/tasks/{task_id}", lambda r: r["state"] in FINAL, timeout)


def cancel_once_started(base: str, task_id: str) -> None:
    """Cancel a task through the API once it has reported progress."""
    wait_json(f"{base}/tasks/{task_id}", lambda record: record["progress"] is not None)
    cancel = call(
        f"{base}/tasks/{task_id}/cancel",
        "POST",
        body=b"{}",
        headers={"Content-Type": "application/json"},
    )
    assert cancel.status == 202


def example_env(instance: Path, **extra: str) -> dict[str, str]:
    """The environment of an example's processes: an instance folder of the test's own."""
    return subprocess_env(INSTANCE_PATH=str(instance), **extra)


@contextmanager
def started(
    argv: list[str], env: dict[str, str], folder: str, ready: str, timeout: float = 30
) -> Iterator[Process]:
    proc = Process(argv, env, cwd=EXAMPLES / folder)
    try:
        proc.wait_for(ready, timeout)
        yield proc
    finally:
        proc.stop()


@contextmanager
def serving(folder: str, app: str, env: dict[str, str]) -> Iterator[tuple[Process, str]]:
    """``flask --app APP run`` in the example's folder; yields the process and its URL."""
    port = free_port()
    argv = flask("--app", app, "run", "--port", str(port))
    with started(argv, env, folder, "Running on") as proc:
        yield proc, f"http://127.0.0.1:{port}"


def celery_worker(app: str, env: dict[str, str], folder: str) -> Any:
    """The Celery command a README gives (``celery -A APP worker --loglevel INFO``)."""
    argv = celery("-A", app, "worker", "--loglevel", "INFO", "--concurrency", "1")
    return started(argv, env, folder, " ready.")


# -- seed 000: progress bar and /status/<id> ----------------------------------------------


def test_seed000_progress_and_the_status_route(tmp_path: Path) -> None:
    env = example_env(tmp_path, FLASK_LONGTASK_STEP_SECONDS="0.04")
    with serving("seed000_progress", "app", env) as (_, base):
        page = call(base + "/").text
        assert "/tasks/static/flask-tasks.js" in page and "task-progress" in page
        sent = call(f"{base}/longtask", "POST", form={"total": "40"})
        assert sent.status == 202
        task_id = sent.json()["task_id"]
        assert sent.headers["Location"] == f"/status/{task_id}"

        seen = []
        deadline = time.monotonic() + 20
        while not seen or seen[-1]["state"] != "succeeded":
            assert time.monotonic() < deadline, seen[-5:]
            seen.append(call(f"{base}/status/{task_id}").json())
            time.sleep(0.05)
        unknown = call(f"{base}/status/no-such-task")

    running = [s for s in seen if s["state"] == "running" and 0 < s["current"] < 40]
    assert running, f"no progress observed: {seen}"
    assert set(running[0]) == {"state", "current", "total", "status"}  # the seed's shape
    first = running[0]
    assert first["total"] == 40 and first["status"].endswith(f"({first['current']}/40)")
    currents = [s["current"] for s in seen]
    assert currents == sorted(currents)
    assert seen[-1] == {
        "state": "succeeded",
        "current": 40,
        "total": 40,
        "status": "all done",
        "result": 42,
    }
    assert unknown.status == 404  # the seed answered PENDING, forever
    assert (tmp_path / "tasks.sqlite3").exists()  # the test's own instance folder


# -- seed 001: the official pattern --------------------------------------------------------


def test_seed001_official_routes_and_beat_in_flask_run(tmp_path: Path) -> None:
    env = example_env(tmp_path, FLASK_TASKS_SCHEDULE__tally__schedule="0.5")
    with serving("seed001_official", "task_app", env) as (proc, base):
        sent = call(f"{base}/add", "POST", form={"a": "2", "b": "40"}).json()
        result = wait_json(f"{base}/result/{sent['result_id']}", lambda body: body["ready"])
        assert result == {"ready": True, "successful": True, "value": 42}
        assert wait_record(base, sent["result_id"])["name"] == "task_app.tasks.add_together"
        tally = wait_json(
            f"{base}/tally",
            lambda body: body.get("state") == "succeeded" and body["result"]["additions"] == 1,
        )
    assert tally["result"] == {"additions": 1, "sum": 42}
    assert "beat is running 1 periodic task" in proc.output


def test_seed001_make_celery_worker_and_flask_tasks_beat(tmp_path: Path) -> None:
    env = example_env(
        tmp_path, FLASK_TASKS_DEV_WORKER="false", FLASK_TASKS_SCHEDULE__tally__schedule="0.5"
    )
    folder = "seed001_official"
    with ExitStack() as stack:
        web, base = stack.enter_context(serving(folder, "task_app", env))
        worker = stack.enter_context(celery_worker("make_celery", env, folder))
        beat_argv = flask("--app", "task_app", "tasks", "beat", "--loglevel", "INFO")
        stack.enter_context(started(beat_argv, env, folder, "beat: Starting"))

        sent = call(f"{base}/add", "POST", form={"a": "20", "b": "22"}).json()
        result = wait_json(f"{base}/result/{sent['result_id']}", lambda body: body["ready"])
        assert result == {"ready": True, "successful": True, "value": 42}
        tally = wait_json(f"{base}/tally", lambda body: body.get("state") == "succeeded")
        worker.wait_for(f"Task task_app.tasks.tally[{tally['id']}] succeeded")
    assert f"Task task_app.tasks.add_together[{sent['result_id']}] succeeded" in worker.output
    assert "development worker" not in web.output


# -- seed 002: Flask-CeleryExt style ------------------------------------------------------


def test_seed002_deploy_reads_its_request_and_cancels(tmp_path: Path) -> None:
    env = example_env(tmp_path, FLASK_DEPLOY_STEP_SECONDS="0.3")
    headers = {"X-Operator": "ana", "Accept-Language": "de, en;q=0.5"}
    with serving("seed002_extension", "deployer", env) as (proc, base):
        assert "Deploy" in call(base + "/").text
        done = call(f"{base}/servers/web-1/deploy?version=2.4.1", "POST", headers=headers)
        stopped = call(f"{base}/servers/web-2/deploy?version=2.4.1", "POST", headers=headers)
        assert done.status == stopped.status == 202
        assert call(f"{base}/servers/mainframe/deploy", "POST").status == 404
        stopped_id = stopped.json()["id"]
        cancel_once_started(base, stopped_id)
        finished = wait_record(base, done.json()["id"])
        cancelled = wait_record(base, stopped_id)
        proc.wait_for("deploy of 2.4.1 to web-2 cancelled after")

    assert finished["state"] == "succeeded"
    assert finished["result"] == {
        "server": "web-1",
        "version": "2.4.1",
        "operator": "ana",  # a header listed in TASKS_REQUEST_HEADERS
        "requested": "POST /servers/web-1/deploy?version=2.4.1",
        "language": "de",
    }
    assert finished["progress"]["current"] == finished["progress"]["total"] == 6
    assert cancelled["state"] == "cancelled"
    assert cancelled["progress"]["current"] < 6


def test_seed002_own_tests_pass_in_eager_mode() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "FLASK_APP")}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "examples/seed002_extension/tests"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "5 passed" in result.stdout


# -- seed 003: a quick job (email) in a multi-module layout -------------------------------


def test_seed003_signup_email_reaches_the_local_smtp_server(tmp_path: Path) -> None:
    env = example_env(tmp_path, FLASK_MAIL_PORT=str(free_port()))
    with serving("seed003_layout", "manage", env) as (_, base):
        assert call(f"{base}/mailbox").text.count("<article") == 0
        sent = call(f"{base}/signup", "POST", form={"name": "Ana", "email": "ana@example.test"})
        assert sent.status == 303
        task_id = sent.headers["Location"].rsplit("/", 1)[1]
        welcome = call(base + sent.headers["Location"]).text
        assert f'src="/tasks/{task_id}"' in welcome
        assert wait_record(base, task_id)["state"] == "succeeded"
        mailbox = call(f"{base}/mailbox").text
    assert mailbox.count("<article") == 1
    assert "ana@example.test" in mailbox and "Welcome aboard" in mailbox
    assert "Hello Ana," in mailbox
    assert len(os.listdir(tmp_path / "mailbox" / "new")) == 1
    listed = subprocess.run(
        flask("--app", "manage", "mailbox"),
        cwd=EXAMPLES / "seed003_layout",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "ana@example.test" in listed.stdout and "Welcome aboard" in listed.stdout


# -- seed 004: tasks declared before the app ----------------------------------------------


def test_seed004_tasks_read_the_app_config(tmp_path: Path) -> None:
    env = example_env(tmp_path, FLASK_TEST_FOR_APP_CONTEXT="from the test")
    with serving("seed004_deferred", "manage", env) as (proc, base):
        assert "Hello, world!" in call(base + "/").text
        by_name = call(f"{base}/add/by-name", "POST", form={"x": "1", "y": "2"}).json()
        typed = call(f"{base}/add", "POST", form={"x": "3", "y": "4"}).json()
        assert by_name["via"].startswith("current_app.extensions['celery'].tasks[")
        records = [wait_record(base, sent["id"]) for sent in (by_name, typed)]
    expected = {"TEST_FOR_APP_CONTEXT": "from the test", "app": "app"}
    assert [record["result"] for record in records] == [
        {"sum": 3, **expected},
        {"sum": 7, **expected},
    ]
    assert "TEST_FOR_APP_CONTEXT = 'from the test'" in proc.output


def test_seed004_celery_worker_entry_point(tmp_path: Path) -> None:
    env = example_env(
        tmp_path, FLASK_TASKS_DEV_WORKER="false", FLASK_TEST_FOR_APP_CONTEXT="worker side"
    )
    folder = "seed004_deferred"
    with (
        serving(folder, "manage", env) as (_, base),
        celery_worker("manage:celery_app", env, folder) as worker,
    ):
        sent = call(f"{base}/add", "POST", form={"x": "5", "y": "6"}).json()
        record = wait_record(base, sent["id"])
        worker.wait_for(f"Task app.celerytasks.my_add[{sent['id']}] succeeded")
    assert record["result"] == {"sum": 11, "TEST_FOR_APP_CONTEXT": "worker side", "app": "app"}
    assert "TEST_FOR_APP_CONTEXT = 'worker side'" in worker.output
