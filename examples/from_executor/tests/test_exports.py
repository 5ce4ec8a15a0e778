"""The export task on a real worker (``tasks_worker``), and the view that sends it in
eager mode (``tasks_eager``: the task runs inside the request, and still gets its record)."""

from __future__ import annotations

from exports import export_orders
from flask import Flask
from flask.testing import FlaskClient

from flask_tasks.testing import EagerTasks, TasksWorker


def test_export_on_a_real_worker(app: Flask, tasks_worker: TasksWorker) -> None:
    with app.app_context():
        handle = export_orders.delay("ACME", 3)
    record = tasks_worker.assert_succeeded(handle)
    assert record.result["rows"] == 3
    assert record.result["language"] == "en"  # sent outside a request: no Accept-Language
    assert record.progress is not None
    assert record.progress.percent == 100


def test_the_view_sends_the_export_and_serves_the_file(
    client: FlaskClient, tasks_eager: EagerTasks
) -> None:
    sent = client.post(
        "/exports", data={"customer": "Ana", "rows": "2"}, headers={"Accept-Language": "fr"}
    )
    assert sent.status_code == 202
    assert sent.headers["Location"] == sent.json["status"] == f"/tasks/{sent.json['id']}"

    record = tasks_eager.assert_succeeded(sent.json["id"])
    assert record.result["url"] == f"http://localhost/exports/{sent.json['id']}.csv"
    with client.get(f"/exports/{sent.json['id']}.csv") as download:
        lines = download.text.splitlines()
    assert lines == ["commande,client,montant", "1000,Ana,0.99", "1001,Ana,37.99"]
    assert client.get(sent.json["status"]).json["state"] == "succeeded"


def test_an_unknown_export_is_a_404(client: FlaskClient) -> None:
    assert client.get("/exports/no-such-task.csv").status_code == 404
    assert client.get("/tasks/no-such-task").status_code == 404
