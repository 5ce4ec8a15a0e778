"""Server-Sent Events for task records, read over a real HTTP server with a small SSE
parser: on the embedded default (SQLite store, polled) and Redis (pushed)."""

from __future__ import annotations

import datetime
import http.client
import importlib.util
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from flask import Flask, request
from werkzeug.serving import make_server

from apps.brokers import REDIS_URL, broker_config
from conftest import AppFactory, require_redis
from flask_tasks import Tasks, TaskState, progress, sse
from flask_tasks.state import Progress, TaskRecord
from flask_tasks.store.base import RecordStore
from flask_tasks.testing import start_worker

tasks = Tasks()


@tasks.task
def steps(total: int, delay: float) -> int:
    for i in range(total):
        progress(i + 1, total, message=f"step {i + 1}")
        time.sleep(delay)
    return total


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.owner_loader
def owner_from_header() -> str | None:
    return request.headers.get("X-User")


@tasks.authorize
def admins(action: str, record: Any) -> bool:
    return request.headers.get("X-Admin") == "yes"


ALICE = {"X-User": "alice"}
FINAL = {"succeeded", "failed", "cancelled"}


# -- a small SSE client ---------------------------------------------------------------------


@dataclass
class Event:
    id: str | None
    event: str
    data: str

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class Stream:
    """One ``GET .../events`` over its own connection, parsed as the SSE spec says."""

    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    closed: bool = False

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def next_event(self) -> Event | None:
        """The next event, or None when the server ended the stream."""
        event_id, kind, data = None, "message", []
        while True:
            raw = self.response.readline()
            if not raw:
                self.closed = True
                return None
            line = raw.decode().rstrip("\r\n")
            if not line:
                if data:
                    return Event(event_id, kind, "\n".join(data))
                event_id, kind = None, "message"
                continue
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event_id = value
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value)
            elif name == "retry":
                self.retry = int(value)

    def events(self) -> list[Event]:
        """Every event until the server ends the stream."""
        out = []
        while (event := self.next_event()) is not None:
            out.append(event)
        return out

    def close(self) -> None:
        self.response.close()
        self.connection.close()


@pytest.fixture
def server() -> Iterator[Callable[[Flask], str]]:
    """``url = server(app)``: the app on Werkzeug's threaded server, stopped afterwards."""
    running: list[tuple[Any, threading.Thread]] = []

    def serve(app: Flask) -> str:
        httpd = make_server("127.0.0.1", 0, app, threaded=True)
        thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
        thread.start()
        running.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_port}"

    yield serve
    for httpd, thread in running:
        httpd.shutdown()
        thread.join(10)
        httpd.server_close()


@pytest.fixture
def connect() -> Iterator[Callable[..., Stream]]:
    """``stream = connect(url, task_id, headers)``; every stream is closed afterwards."""
    opened: list[Stream] = []

    def open_stream(base: str, task_id: str, headers: dict[str, str] | None = None) -> Stream:
        parts = urlsplit(base)
        assert parts.hostname is not None and parts.port is not None
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        connection.request("GET", f"/tasks/{task_id}/events", headers=headers or {})
        stream = Stream(connection, connection.getresponse())
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


@pytest.fixture(autouse=True)
def _short_keepalive(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Keep-alives every half second, so a closed client is noticed within a second; the
    subscribers and pollers stop after the test."""
    monkeypatch.setattr(sse, "KEEPALIVE_INTERVAL", 0.5)
    yield
    sse.shutdown()


@pytest.fixture(params=["embedded", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    """The embedded default (SQLite store, polled) and Redis (pushed)."""
    if request.param == "redis":
        require_redis()
    return str(request.param)


@pytest.fixture
def app(make_app: AppFactory, kind: str) -> Flask:
    app = make_app(kind)
    tasks.init_app(app)
    return app


def store_of(app: Flask) -> RecordStore:
    store: RecordStore = app.extensions["tasks"].store
    return store


def send(app: Flask, task: Any, *args: Any, user: str | None = "alice") -> str:
    """Send a task during a request of ``user`` (no worker: it stays queued)."""
    headers = {"X-User": user} if user else {}
    with app.test_request_context(headers=headers):
        return str(task.delay(*args).id)


def write_progress(app: Flask, task_id: str, current: int, total: int = 10) -> None:
    store_of(app).write_progress(task_id, Progress.make(current, total, f"at {current}"))


def get_body(app: Flask, task_id: str, headers: dict[str, str] | None = None) -> str:
    """What GET returns now (not the copy the status view may keep for 0.2 s)."""
    app.extensions["tasks"].cache.forget(task_id)
    response = app.test_client().get(f"/tasks/{task_id}", headers=headers or ALICE)
    assert response.status_code == 200
    return response.get_data(as_text=True).rstrip("\n")


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def hub_stats(app: Flask) -> dict[str, int]:
    hub = sse.hub(store_of(app))
    return hub.stats() if hub is not None else {"topics": 0, "watchers": 0}


def micros(at: datetime.datetime) -> int:
    return (at - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)) // (
        datetime.timedelta(microseconds=1)
    )


# -- the tests ------------------------------------------------------------------------------


def test_a_running_task_streams_its_progress_then_the_stream_ends(
    app: Flask, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    url = server(app)
    with start_worker(app):
        task_id = send(app, steps, 4, 0.3)
        stream = connect(url, task_id, ALICE)
        assert stream.status == 200
        assert stream.header("Content-Type") == "text/event-stream"
        assert stream.header("Cache-Control") == "no-store"
        assert stream.header("X-Accel-Buffering") == "no"
        events = stream.events()
    assert stream.closed
    assert stream.retry == 2000
    assert len(events) >= 4
    assert {e.event for e in events} == {"record"}
    records = [e.json for e in events]
    # In order: versions grow, progress never goes back, only the last one is final.
    versions = [int(e.id or "") for e in events]
    assert versions == sorted(set(versions))
    assert [r["state"] for r in records][-1] == "succeeded"
    assert all(r["state"] not in FINAL for r in records[:-1])
    currents = [r["progress"]["current"] for r in records if r["progress"]]
    assert currents == sorted(currents) and currents[-1] == 4
    assert records[-1]["result"] == 4
    # Each event's id is its record's updated_at, and the last one is exactly what GET says.
    for event, record in zip(events, records, strict=True):
        updated = datetime.datetime.fromisoformat(record["updated_at"])
        assert int(event.id or "") == micros(updated)
    assert events[-1].data == get_body(app, task_id)


def test_events_carry_the_get_json_in_order(
    app: Flask, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    """Driven through the store, the way a worker writes: each change is one event."""
    url = server(app)
    task_id = send(app, add, 1, 2)
    stream = connect(url, task_id, ALICE)
    first = stream.next_event()
    assert first is not None
    assert first.data == get_body(app, task_id)
    assert first.json["state"] == "queued"
    assert first.json["links"]["events"] == f"/tasks/{task_id}/events"

    store = store_of(app)
    now = datetime.datetime.now(datetime.timezone.utc)
    store.mark_running(task_id, name=add.name, attempt=1, started_at=now)
    running = stream.next_event()
    assert running is not None and running.json["state"] == "running"
    assert running.data == get_body(app, task_id)
    for current in (3, 6):
        write_progress(app, task_id, current)
        event = stream.next_event()
        assert event is not None
        assert event.json["progress"]["current"] == current
        assert event.data == get_body(app, task_id)
    assert app.test_client().post(f"/tasks/{task_id}/cancel", json={}, headers=ALICE).status_code
    flagged = stream.next_event()
    assert flagged is not None and flagged.json["cancel_requested"] is True
    meta = json.dumps({"status": "SUCCESS", "result": 3, "traceback": None, "children": []})
    store.save(task_id, celery_state="SUCCESS", meta=meta)
    last = stream.next_event()
    assert last is not None and last.json["state"] == "succeeded" and last.json["result"] == 3
    assert last.data == get_body(app, task_id)
    assert stream.next_event() is None  # final: the server ended the stream
    ids = [int(e.id or "") for e in (first, running, flagged, last)]
    assert ids == sorted(set(ids))
    wait_until(lambda: hub_stats(app)["watchers"] == 0)


def test_last_event_id_skips_the_record_the_client_has(
    app: Flask, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    url = server(app)
    task_id = send(app, add, 1, 2)
    first = connect(url, task_id, ALICE).next_event()
    assert first is not None and first.id

    again = connect(url, task_id, {**ALICE, "Last-Event-ID": first.id})
    write_progress(app, task_id, 5)
    event = again.next_event()
    assert event is not None
    assert event.id != first.id
    assert event.json["progress"]["current"] == 5
    assert again.retry == 2000

    stale = connect(url, task_id, {**ALICE, "Last-Event-ID": first.id})
    current = stale.next_event()
    assert current is not None and current.id == event.id  # not the client's: sent

    # A final record the client already has: nothing to send, the stream ends.
    store_of(app).request_cancel(task_id)
    done = connect(url, task_id, ALICE).events()
    assert [e.json["state"] for e in done] == ["cancelled"]
    finished = connect(url, task_id, {**ALICE, "Last-Event-ID": done[0].id or ""})
    assert finished.status == 200
    assert finished.events() == [] and finished.retry == 2000


def test_unknown_and_other_users_tasks_are_404(
    app: Flask, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    url = server(app)
    task_id = send(app, add, 1, 2)
    for path_id, headers in [
        ("nope", ALICE),
        ("x" * 300, ALICE),
        (task_id, {"X-User": "bob"}),
        (task_id, {}),
    ]:
        stream = connect(url, path_id, headers)
        assert stream.status == 404
        assert stream.header("Content-Type") == "application/json"
        assert json.loads(stream.response.read())["error"]["code"] == "not_found"
    admin = connect(url, task_id, {"X-User": "bob", "X-Admin": "yes"})
    assert admin.status == 200
    event = admin.next_event()
    assert event is not None and event.json["id"] == task_id
    # A task without an owner is reachable by its id, as with GET.
    anyone = connect(url, send(app, add, 1, 1, user=None), {"X-User": "bob"})
    assert anyone.status == 200


def test_keep_alive_comments(
    app: Flask,
    server: Callable[[Flask], str],
    connect: Callable[..., Stream],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "KEEPALIVE_INTERVAL", 0.1)
    url = server(app)
    task_id = send(app, add, 1, 2)
    stream = connect(url, task_id, ALICE)
    assert stream.next_event() is not None
    started = time.monotonic()
    while len(stream.comments) < 3:
        line = stream.response.readline()
        if line.startswith(b":"):
            stream.comments.append(line[1:].decode().strip())
    assert stream.comments == ["keep-alive"] * 3
    assert time.monotonic() - started < 2


def test_a_client_that_goes_away_is_unwatched(
    app: Flask, kind: str, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    url = server(app)
    ids = [send(app, add, i, i) for i in range(2)]
    streams = [connect(url, task_id, ALICE) for task_id in ids for _ in range(3)]
    for stream in streams:
        assert stream.next_event() is not None
    wait_until(lambda: hub_stats(app)["watchers"] == 6 and hub_stats(app)["topics"] == 2)
    client = redis.Redis.from_url(REDIS_URL) if kind == "redis" else None
    if client is not None:
        store: Any = store_of(app)
        wait_until(lambda: hub_stats(app)["subscribed"] == 2)
        channels = [store.events_channel(task_id) for task_id in ids]
        assert [n for _, n in client.pubsub_numsub(*channels)] == [1, 1]
    for stream in streams[:3]:
        stream.close()
    wait_until(lambda: hub_stats(app)["watchers"] == 3 and hub_stats(app)["topics"] == 1)
    for stream in streams[3:]:
        stream.close()
    wait_until(lambda: hub_stats(app)["topics"] == 0)
    if client is not None:
        wait_until(lambda: hub_stats(app)["subscribed"] == 0)
        assert [n for _, n in client.pubsub_numsub(*channels)] == [0, 0]
        client.close()


def subscribers(client: redis.Redis, pid: int) -> list[dict[str, Any]]:
    """This process's SSE subscriber connections, as the Redis server lists them."""
    name = f"{sse.SUBSCRIBER_NAME}:{pid}"
    return [c for c in client.client_list() if c.get("name") == name]


@pytest.mark.redis
def test_one_redis_connection_serves_many_streams(
    make_app: AppFactory, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    app = make_app("redis", TASKS_SSE_MAX_PER_CLIENT=0)  # 50 streams of one user
    tasks.init_app(app)
    url = server(app)
    ids = [send(app, add, i, i) for i in range(5)]
    streams = [connect(url, ids[i % 5], ALICE) for i in range(50)]
    for stream in streams:
        assert stream.next_event() is not None
    wait_until(lambda: hub_stats(app)["subscribed"] == 5)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        found = subscribers(client, os.getpid())
        assert len(found) == 1, found
        assert int(found[0]["sub"]) == 5
        store: Any = store_of(app)
        counts = client.pubsub_numsub(*(store.events_channel(i) for i in ids))
        assert [n for _, n in counts] == [1] * 5
        # One write reaches the ten streams of its task (and only those).
        write_progress(app, ids[0], 7)
        for stream in streams[0::5]:
            event = stream.next_event()
            assert event is not None and event.json["progress"]["current"] == 7
        assert hub_stats(app) == {"topics": 5, "watchers": 50, "running": 1, "subscribed": 5}
    finally:
        client.close()
    for stream in streams:
        stream.close()
    wait_until(lambda: hub_stats(app)["topics"] == 0)


@pytest.mark.redis
def test_the_subscriber_reconnects_and_streams_miss_nothing(
    make_app: AppFactory, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    app = make_app("redis")
    tasks.init_app(app)
    url = server(app)
    task_id = send(app, add, 1, 2)
    stream = connect(url, task_id, ALICE)
    assert stream.next_event() is not None
    wait_until(lambda: hub_stats(app)["subscribed"] == 1)
    client = redis.Redis.from_url(REDIS_URL)
    try:
        (before,) = subscribers(client, os.getpid())
        client.client_kill_filter(_id=before["id"])
        write_progress(app, task_id, 4)  # while the subscriber is away, most likely
        event = stream.next_event()
        assert event is not None and event.json["progress"]["current"] == 4
        wait_until(lambda: len(subscribers(client, os.getpid())) == 1)
        (after,) = subscribers(client, os.getpid())
        assert after["id"] != before["id"]
        write_progress(app, task_id, 5)
        event = stream.next_event()
        assert event is not None and event.json["progress"]["current"] == 5
    finally:
        client.close()


def test_a_deleted_record_ends_the_stream(
    app: Flask, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    url = server(app)
    task_id = send(app, add, 1, 2)
    stream = connect(url, task_id, ALICE)
    assert stream.next_event() is not None
    store_of(app).delete(task_id)
    assert stream.events() == []
    assert stream.closed


def test_a_store_that_is_down_is_a_503_before_streaming(
    make_app: AppFactory, server: Callable[[Flask], str], connect: Callable[..., Stream]
) -> None:
    app = make_app(TASKS_STORE_URL="redis://127.0.0.1:1/0")
    tasks.init_app(app)
    stream = connect(server(app), "some-id", ALICE)
    assert stream.status == 503
    assert stream.header("Content-Type") == "application/json"
    assert json.loads(stream.response.read())["error"]["code"] == "store_unavailable"


# -- real servers: gunicorn's gthread and gevent workers -------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def gunicorn(worker_class: str, queue: str, tmp_path: Any) -> Iterator[tuple[str, int]]:
    """One gunicorn worker serving ``apps.factory`` on Redis; yields its URL and the
    master's pid."""
    from workers import process, subprocess_env

    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--preload",  # the app is loaded before the fork: the subscriber must start after
        "-w",
        "1",
        "-k",
        worker_class,
        "--threads",
        "20",
        "--worker-connections",
        "100",
        "-b",
        f"127.0.0.1:{port}",
        "apps.factory:create_app()",
    ]
    env = subprocess_env(FT_BROKER="redis", FT_QUEUE=queue, FT_INSTANCE=str(tmp_path / "gi"))
    with process(argv, env, ready="Booting worker") as proc:
        deadline = time.monotonic() + 20
        while True:
            try:
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                connection.request("GET", "/tasks/openapi.json")
                connection.getresponse().read()
                connection.close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc.proc.pid


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["gthread", "gevent"])
def test_gunicorn_workers_share_one_subscriber(
    worker_class: str, make_app: AppFactory, tmp_path: Any, connect: Callable[..., Stream]
) -> None:
    if worker_class == "gevent" and importlib.util.find_spec("gevent") is None:
        pytest.skip("gevent is not installed (pip install gevent)")
    require_redis()
    queue = f"test-{uuid.uuid4().hex[:12]}"
    app = make_app("redis", **broker_config("redis", queue))  # the server's store
    tasks.init_app(app)
    store = store_of(app)
    now = datetime.datetime.now(datetime.timezone.utc)
    ids = [f"g-{uuid.uuid4().hex}" for _ in range(3)]
    for task_id in ids:
        store.create(
            TaskRecord(
                id=task_id, name="x", state=TaskState.QUEUED, submitted_at=now, updated_at=now
            )
        )
    with gunicorn(worker_class, queue, tmp_path) as (url, master):
        streams = [connect(url, ids[i % 3]) for i in range(15)]
        for stream in streams:
            assert stream.status == 200
            assert stream.next_event() is not None
        client = redis.Redis.from_url(REDIS_URL)
        try:
            channels = [store.events_channel(i) for i in ids]  # type: ignore[attr-defined]
            wait_until(lambda: [n for _, n in client.pubsub_numsub(*channels)] == [1, 1, 1])
            names = [
                c for c in client.client_list() if c["name"].startswith(sse.SUBSCRIBER_NAME + ":")
            ]
            mine = [c for c in names if int(c["sub"]) == 3]
            assert len(mine) == 1, names
            # Started in the worker that serves, not in the master that loaded the app.
            assert int(mine[0]["name"].rsplit(":", 1)[1]) != master
        finally:
            client.close()
        for task_id in ids:
            store.write_progress(task_id, Progress.make(1, 2))
        for stream in streams:
            event = stream.next_event()
            assert event is not None and event.json["progress"]["current"] == 1
        meta = json.dumps({"status": "SUCCESS", "result": 1, "traceback": None, "children": []})
        for task_id in ids:
            store.save(task_id, celery_state="SUCCESS", meta=meta)
        for stream in streams:
            assert [e.json["state"] for e in stream.events()] == ["succeeded"]
