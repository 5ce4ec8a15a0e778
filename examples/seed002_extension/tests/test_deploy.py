"""The deploy task, in eager mode (``tasks_eager``: it runs inside the request that sends
it, and still gets its record) and once on a real worker (``tasks_worker``)."""

from __future__ import annotations

import time

from deployer.deployments import STEPS, deploy
from flask import Flask
from flask.testing import FlaskClient

from flask_tasks import TaskState
from flask_tasks.testing import EagerTasks, TasksWorker

HEADERS = {"X-Operator": "ana", "Accept-Language": "fr, en;q=0.5"}


def test_deploy_reports_every_step_and_reads_the_request(
    client: FlaskClient, tasks_eager: EagerTasks
) -> None:
    response = client.post("/servers/web-1/deploy?version=2.4.1", headers=HEADERS)
    assert response.status_code == 202
    assert response.headers["Location"] == response.json["status"]

    record = tasks_eager.assert_succeeded(response.json["id"])
    assert record.result == {
        "server": "web-1",
        "version": "2.4.1",
        "operator": "ana",
        "requested": "POST /servers/web-1/deploy?version=2.4.1",
        "language": "fr",
    }
    assert record.progress is not None
    assert (record.progress.current, record.progress.total) == (len(STEPS), len(STEPS))
    assert record.progress.message == "web-1 runs 2.4.1"


def test_the_status_api_serves_the_record(client: FlaskClient, tasks_eager: EagerTasks) -> None:
    sent = client.post("/servers/web-2/deploy", headers=HEADERS).json
    status = client.get(sent["status"]).json
    assert status["state"] == "succeeded"
    assert status["progress"]["percent"] == 100
    assert status["result"]["version"] == "latest"


def test_an_unknown_server_sends_nothing(client: FlaskClient, tasks_eager: EagerTasks) -> None:
    assert client.post("/servers/mainframe/deploy").status_code == 404


def test_a_task_sent_outside_a_request_gets_a_default_one(
    app: Flask, tasks_worker: TasksWorker
) -> None:
    with app.app_context():  # a CLI command or a script: no request to rebuild
        handle = deploy.delay("worker-1", "2.5.0")
    record = tasks_worker.assert_succeeded(handle)
    assert record.result["operator"] == "someone"
    assert record.result["requested"] == "GET /"


def test_on_a_real_worker_the_request_travels_and_cancel_stops_it(
    app: Flask, client: FlaskClient, tasks_worker: TasksWorker
) -> None:
    # Headers listed in TASKS_REQUEST_HEADERS travel in the message.
    done = client.post("/servers/web-1/deploy?version=3.0", headers=HEADERS).json
    record = tasks_worker.assert_succeeded(done["id"])
    assert record.result["operator"] == "ana"
    assert record.result["requested"] == "POST /servers/web-1/deploy?version=3.0"

    app.config["DEPLOY_STEP_SECONDS"] = 0.3  # read by the task when it runs
    sent = client.post("/servers/web-2/deploy?version=3.0", headers=HEADERS).json
    deadline = time.monotonic() + 10
    while (current := tasks_worker.record(sent["id"])) is None or not current.progress:
        assert time.monotonic() < deadline, "the deploy did not start"
        time.sleep(0.05)
    assert current.state is TaskState.RUNNING
    cancelled = client.post(f"/tasks/{sent['id']}/cancel", json={})
    assert cancelled.status_code == 202
    record = tasks_worker.assert_cancelled(sent["id"])
    assert record.progress is not None
    assert record.progress.current < len(STEPS)
