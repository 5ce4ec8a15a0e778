"""The HTTP API: status, listing, cancellation, ownership, the OpenAPI document."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate

from conftest import AppFactory
from flask_tasks import Tasks

tasks = Tasks()


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
def explode() -> None:
    raise RuntimeError("it broke")


@tasks.owner_loader
def owner_from_header() -> str | None:
    return request.headers.get("X-User")


@tasks.authorize
def admins(action: str, record: Any) -> bool:
    return request.headers.get("X-Admin") == "yes"


def validator(client: FlaskClient, schema: str) -> Draft202012Validator:
    document = client.get("/tasks/openapi.json").get_json()
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{schema}", "components": document["components"]}
    )


def check(client: FlaskClient, schema: str, body: Any) -> None:
    errors = sorted(validator(client, schema).iter_errors(body), key=str)
    assert not errors, errors


@pytest.fixture
def app(make_app: AppFactory, broker: str) -> Flask:
    """Eager tasks, with the record store each broker kind brings: SQLite, Redis, PostgreSQL."""
    app = make_app(
        broker, CELERY_TASK_ALWAYS_EAGER=True, CELERY_TASK_EAGER_PROPAGATES_EXCEPTIONS=False
    )
    tasks.init_app(app)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def send(app: Flask, task: Any, *args: Any, user: str | None = "alice") -> str:
    headers = {"X-User": user} if user else {}
    with app.test_request_context(headers=headers):
        return str(task.delay(*args).id)


def test_the_openapi_document_is_valid(client: FlaskClient) -> None:
    response = client.get("/tasks/openapi.json")
    assert response.status_code == 200
    document = response.get_json()
    validate(document)
    assert set(document["paths"]) == {
        "/tasks/",
        "/tasks/{task_id}",
        "/tasks/{task_id}/cancel",
        "/tasks/{task_id}/events",
    }


def test_status_of_a_finished_task(app: Flask, client: FlaskClient) -> None:
    task_id = send(app, add, 2, 3)
    response = client.get(f"/tasks/{task_id}", headers={"X-User": "alice"})
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.get_json()
    check(client, "Task", body)
    assert body["state"] == "succeeded"
    assert body["result"] == 5
    assert body["links"] == {"self": f"/tasks/{task_id}"}


def test_a_failed_task_is_a_200_without_traceback(app: Flask, client: FlaskClient) -> None:
    task_id = send(app, explode)
    body = client.get(f"/tasks/{task_id}", headers={"X-User": "alice"}).get_json()
    check(client, "Task", body)
    assert body["state"] == "failed"
    assert body["error"] == {"type": "RuntimeError", "message": "it broke"}
    app.debug = True
    debug_body = client.get(f"/tasks/{task_id}", headers={"X-User": "alice"}).get_json()
    assert "Traceback" in debug_body["error"]["traceback"]


@pytest.mark.parametrize(
    "path",
    [
        "/tasks/nope",
        "/tasks/" + "x" * 300,
        "/tasks/../etc/passwd",
        "/tasks/a/b/c",
        "/tasks/%2e%2e",
    ],
)
def test_unknown_ids_are_404(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    check(client, "Error", response.get_json())
    assert response.get_json()["error"]["code"] == "not_found"


def test_another_users_task_is_404_unless_authorized(app: Flask, client: FlaskClient) -> None:
    task_id = send(app, add, 1, 1, user="alice")
    assert client.get(f"/tasks/{task_id}", headers={"X-User": "bob"}).status_code == 404
    assert client.get(f"/tasks/{task_id}").status_code == 404
    admin = client.get(f"/tasks/{task_id}", headers={"X-User": "bob", "X-Admin": "yes"})
    assert admin.status_code == 200


def test_a_task_without_owner_is_reachable_by_id_and_never_listed(
    app: Flask, client: FlaskClient
) -> None:
    task_id = send(app, add, 1, 1, user=None)
    assert client.get(f"/tasks/{task_id}", headers={"X-User": "bob"}).status_code == 200
    assert client.get("/tasks/", headers={"X-User": "bob"}).get_json()["tasks"] == []
    assert client.get("/tasks/").get_json()["tasks"] == []


def test_listing_pages_and_filters(app: Flask, client: FlaskClient) -> None:
    ids = [send(app, add, i, i) for i in range(12)]
    failed = [send(app, explode) for _ in range(3)]
    send(app, add, 0, 0, user="bob")
    alice = {"X-User": "alice"}

    first = client.get("/tasks/?limit=10", headers=alice)
    assert first.status_code == 200
    body = first.get_json()
    check(client, "TaskPage", body)
    assert len(body["tasks"]) == 10
    assert body["next_cursor"]
    second = client.get(body["links"]["next"], headers=alice).get_json()
    check(client, "TaskPage", second)
    listed = [t["id"] for t in body["tasks"] + second["tasks"]]
    assert listed == list(reversed(ids + failed))
    assert second["next_cursor"] is None

    only_failed = client.get("/tasks/?state=failed", headers=alice).get_json()
    assert sorted(t["id"] for t in only_failed["tasks"]) == sorted(failed)
    by_name = client.get(f"/tasks/?name={explode.name}", headers=alice).get_json()
    assert len(by_name["tasks"]) == 3


@pytest.mark.parametrize(
    "query", ["state=sleeping", "limit=0", "limit=1000", "limit=ten", "cursor=garbage!"]
)
def test_bad_list_parameters_are_400(client: FlaskClient, query: str) -> None:
    response = client.get(f"/tasks/?{query}", headers={"X-User": "alice"})
    assert response.status_code == 400
    check(client, "Error", response.get_json())


def test_cancel(make_app: AppFactory, broker: str) -> None:
    app = make_app(broker)  # not eager: tasks stay queued, no worker runs
    tasks.init_app(app)
    client = app.test_client()
    alice = {"X-User": "alice"}
    task_id = send(app, add, 1, 2)

    form = client.post(f"/tasks/{task_id}/cancel", data={"x": "1"}, headers=alice)
    assert form.status_code == 415  # a cross-site form cannot cancel
    assert (
        client.post(f"/tasks/{task_id}/cancel", json={}, headers={"X-User": "bob"}).status_code
        == 404
    )

    response = client.post(f"/tasks/{task_id}/cancel", json={}, headers=alice)
    assert response.status_code == 202
    body = response.get_json()
    check(client, "Task", body)
    assert body["state"] == "cancelled"
    assert body["cancel_requested"] is True

    again = client.post(f"/tasks/{task_id}/cancel", headers={**alice, "X-Requested-With": "fetch"})
    assert again.status_code == 409
    check(client, "Error", again.get_json())
    assert again.get_json()["task"]["state"] == "cancelled"
    assert client.post("/tasks/nope/cancel", json={}).status_code == 404


def test_a_store_that_is_down_is_a_503(make_app: AppFactory) -> None:
    app = make_app(TASKS_STORE_URL="redis://127.0.0.1:1/0")
    tasks.init_app(app)
    response = app.test_client().get("/tasks/some-id")
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "store_unavailable"
    assert response.headers["Cache-Control"] == "no-store"


def test_prefix_and_switch(make_app: AppFactory) -> None:
    moved = make_app(TASKS_URL_PREFIX="/api/jobs")
    Tasks(moved)
    assert moved.test_client().get("/api/jobs/nope").status_code == 404
    assert moved.test_client().get("/api/jobs/openapi.json").get_json()["paths"]["/api/jobs/"]
    off = make_app(TASKS_API=False)
    Tasks(off)
    assert "tasks" not in off.blueprints


def test_flask_login_user_is_the_owner(make_app: AppFactory) -> None:
    from flask_login import LoginManager, UserMixin, login_user

    class User(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    app = make_app(CELERY_TASK_ALWAYS_EAGER=True, SECRET_KEY="test")
    ext = Tasks(app)

    @ext.task
    def mine() -> int:
        return 1

    login = LoginManager(app)
    login.user_loader(User)

    @app.post("/start")
    def start() -> dict[str, Any]:
        login_user(User("u42"))
        return {"id": mine.delay().id}

    client = app.test_client()
    task_id = client.post("/start").get_json()["id"]
    with app.app_context():
        record = ext.get(task_id)
    assert record is not None and record.owner == "u42"
    listed = client.get("/tasks/").get_json()["tasks"]
    assert [t["id"] for t in listed] == [task_id]


def test_status_reads_are_cached_briefly(make_app: AppFactory) -> None:
    """Polls of one task cost one store read per interval; a cancel is seen at once."""
    import time

    app = make_app(TASKS_PROGRESS_INTERVAL=0.3)
    ext = Tasks(app)

    @ext.task
    def work() -> None:
        pass

    client = app.test_client()
    with app.app_context():
        handle = work.delay()
    time.sleep(0.5)  # a record is cached for half its age at most: old enough for 0.2 s
    state = app.extensions["tasks"]
    reads: list[str] = []
    real_get = state.store.get

    def counting_get(task_id: str) -> Any:
        reads.append(task_id)
        return real_get(task_id)

    state.store.get = counting_get  # type: ignore[method-assign]
    try:
        for _ in range(5):
            assert client.get(f"/tasks/{handle.id}").get_json()["state"] == "queued"
        assert len(reads) == 1
        time.sleep(0.25)  # a queued or running record is re-read after the interval
        client.get(f"/tasks/{handle.id}")
        assert len(reads) == 2
        # cancelling through the API drops the cached copy at once
        assert client.post(f"/tasks/{handle.id}/cancel", json={}).status_code == 202
        assert client.get(f"/tasks/{handle.id}").get_json()["state"] == "cancelled"
        before = len(reads)
        for _ in range(5):  # a finished record does not change: served from the cache
            assert client.get(f"/tasks/{handle.id}").get_json()["state"] == "cancelled"
        assert len(reads) == before
    finally:
        del state.store.get


def test_a_task_that_just_started_is_cached_for_half_its_age_at_most() -> None:
    """A client polling right after ``delay()`` sees the end of a short task at once: the
    cache keeps an unfinished record for half its age (capped by the interval)."""
    import datetime
    import time

    from flask_tasks._cache import RecordCache
    from flask_tasks.state import TaskRecord, TaskState

    cache = RecordCache(running_ttl=0.2, finished_ttl=10)

    def record(state: TaskState, **ages: float) -> TaskRecord:
        now = datetime.datetime.now(datetime.timezone.utc)
        times = {key: now - datetime.timedelta(seconds=age) for key, age in ages.items()}
        return TaskRecord(id=f"{state}-{sorted(ages.items())}", name="t", state=state, **times)

    def kept_for(rec: TaskRecord) -> float:
        start = time.monotonic()
        cache.put(rec)
        entry = cache._entries.get(rec.id)
        return 0.0 if entry is None else entry[0] - start

    fresh = record(TaskState.QUEUED, submitted_at=0.02, updated_at=0.02)
    assert 0 < kept_for(fresh) <= 0.05  # about 0.01 s, against 0.2 s for an old one
    started = record(TaskState.RUNNING, submitted_at=5, started_at=0.04, updated_at=0.0)
    assert 0.01 < kept_for(started) <= 0.06  # from its start, not from when it was sent
    long_running = record(TaskState.RUNNING, submitted_at=60, started_at=30, updated_at=0.0)
    assert 0.19 < kept_for(long_running) <= 0.21  # the interval caps it
    finished = record(TaskState.SUCCEEDED, submitted_at=0.01, updated_at=0.0)
    assert 9.9 < kept_for(finished) <= 10.01  # a finished record never changes
    ahead = record(TaskState.RUNNING, submitted_at=-1, started_at=-1, updated_at=0.0)
    assert kept_for(ahead) == 0  # a worker clock ahead of ours: not cached at all
