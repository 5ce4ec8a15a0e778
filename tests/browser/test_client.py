"""The browser client (static/flask-tasks.js) in real Chromium, against a real app, record
store and worker: ``watch()``, the ``<task-progress>`` element, SSE and its polling fallback.

Screenshots for the docs come from ``tests/browser/screenshots.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_app import CutEventStreams, count, create_app, explode, wander
from flask import Flask

from flask_tasks.testing import TaskChecks, start_worker

# The browser fixtures (browser, page, live_server) and the browser marker.

END = 15_000  # ms: a generous bound for a task's end to show in the page

# Every DOM event the elements emit, kept in window.taskEvents.
COLLECT_EVENTS = """
window.taskEvents = [];
for (const type of ["task-update", "task-done", "task-error"]) {
  document.addEventListener(type, (event) => window.taskEvents.push({
    type, target: event.target.id, state: event.detail.record?.state ?? null,
    code: event.detail.error?.code ?? null, retrying: event.detail.error?.retrying ?? null,
  }));
}
"""

# Start watch() on a task and keep what its callbacks receive in window.seen.
WATCH = """([target, options]) => {
  const seen = { updates: [], done: [], errors: [], transports: [] };
  window.seen = seen;
  window.handle = window.flaskTasks.watch(target, {
    ...options,
    onUpdate: (record) => { seen.updates.push(record); seen.transports.push(handle.transport); },
    onDone: (record) => seen.done.push(record),
    onError: (error) => seen.errors.push(error),
  });
}"""


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return create_app(make_app)


@pytest.fixture
def site(app: Flask, live_server: Any) -> Iterator[str]:
    with live_server(app) as url:
        yield url


@pytest.fixture
def worker(app: Flask) -> Iterator[None]:
    with start_worker(app):
        yield


@pytest.fixture
def events_page(page: Any) -> Any:
    page.add_init_script(COLLECT_EVENTS)
    return page


def send(app: Flask, task: Any, *args: Any, **options: Any) -> str:
    with app.app_context():
        return str(task.apply_async(args, **options).id)


def sse_ready(app: Flask) -> bool:
    """Whether the events endpoint is there yet (it answers 404 for an unknown id)."""
    try:
        response = app.test_client().get("/tasks/no-such-task/events")
    except NotImplementedError:
        return False
    return response.status_code == 404


def open_page(page: Any, site: str, *ids: str, cancelable: bool = False) -> None:
    query = "&".join(f"id={task_id}" for task_id in ids)
    page.goto(f"{site}/page?{query}{'&cancelable' if cancelable else ''}")
    page.wait_for_function("window.flaskTasks !== undefined")


def wait_state(page: Any, state: str, index: int = 1, timeout: int = END) -> None:
    page.wait_for_function(
        "([index, state]) => document.querySelector(`#task-${index}`).state === state",
        arg=[index, state],
        timeout=timeout,
    )


def text(page: Any, part: str, index: int = 1) -> str:
    return str(page.locator(f"#task-{index} [part~={part}]").inner_text())


class Requests:
    """The URLs of the page's requests that match a regular expression."""

    def __init__(self, page: Any, pattern: str) -> None:
        self.pattern = re.compile(pattern)
        self.urls: list[str] = []
        page.on("request", self._seen)

    def _seen(self, request: Any) -> None:
        if self.pattern.search(request.url):
            self.urls.append(request.url)

    def __len__(self) -> int:
        return len(self.urls)


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_progress_bar_reaches_100_percent_and_shows_the_result(
    make_app: Callable[..., Flask], live_server: Any, events_page: Any, broker: str
) -> None:
    app = create_app(make_app, broker)
    page = events_page
    task_id = send(app, count, 8, 0.15)
    with live_server(app) as site, start_worker(app):
        open_page(page, site, task_id)
        wait_state(page, "running")
        wait_state(page, "succeeded")
    bar = page.locator("#task-1").get_by_role("progressbar")
    assert bar.get_attribute("aria-valuenow") == "100"
    assert text(page, "percent") == "100%"
    assert text(page, "status") == "Done"
    assert text(page, "message") == "step 8 of 8"
    assert text(page, "eta") == ""
    assert text(page, "result") == '{"counted":8,"ok":true}'
    assert not page.locator("#task-1 [part~=error]").is_visible()
    events = page.evaluate("window.taskEvents")
    assert [e["state"] for e in events if e["type"] == "task-done"] == ["succeeded"]
    assert {"type": "task-update", "target": "task-1", "state": "running"}.items() <= next(
        e for e in events if e["state"] == "running"
    ).items()
    assert not [e for e in events if e["type"] == "task-error"]


def test_the_cancel_button_ends_in_cancelled(
    make_app: Callable[..., Flask], live_server: Any, events_page: Any
) -> None:
    # The page carries a CSRF token, and the app refuses a cancel without it.
    app = create_app(make_app, CSRF_TOKEN="token-123")
    page = events_page
    running = send(app, count, 100, 0.1)
    queued = send(app, count, 1, 0.0, queue="nobody-consumes-this")
    with live_server(app) as site, start_worker(app):
        open_page(page, site, running, queued, cancelable=True)
        wait_state(page, "running", 1)
        wait_state(page, "queued", 2)
        page.wait_for_function("document.querySelector('#task-1').record?.progress")
        for index in (1, 2):
            button = page.locator(f"#task-{index}").get_by_role("button", name="Cancel")
            button.click()
        wait_state(page, "cancelled", 2)  # a queued task: cancelled at once
        wait_state(page, "cancelled", 1)  # a running one: at its next progress report
        TaskChecks(app).assert_cancelled(running)
    for index in (1, 2):
        assert text(page, "status", index) == "Cancelled"
        assert not page.locator(f"#task-{index}").get_by_role("button").is_visible()
    events = page.evaluate("window.taskEvents")
    assert sorted(e["target"] for e in events if e["type"] == "task-done") == ["task-1", "task-2"]
    assert not [e for e in events if e["type"] == "task-error"]


def test_a_failed_task_shows_its_error(
    app: Flask, site: str, worker: None, events_page: Any
) -> None:
    page = events_page
    task_id = send(app, explode, "the input is bad")
    open_page(page, site, task_id)
    wait_state(page, "failed")
    assert text(page, "status") == "Failed"
    assert text(page, "error") == "ValueError: the input is bad"
    assert not page.locator("#task-1 [part~=result]").is_visible()
    bar = page.locator("#task-1").get_by_role("progressbar")
    assert bar.get_attribute("aria-valuenow") is None
    events = page.evaluate("window.taskEvents")
    assert [e["state"] for e in events if e["type"] == "task-done"] == ["failed"]


def test_an_unknown_id_shows_a_clear_message_and_ends(
    app: Flask, site: str, worker: None, events_page: Any
) -> None:
    page = events_page
    records = Requests(page, r"/tasks/no-such-task$")
    open_page(page, site, "no-such-task")
    wait_state(page, "not-found")
    assert text(page, "status") == "Task not found"
    assert text(page, "error") == "No task with this id (or it expired)."
    events = page.evaluate("window.taskEvents")
    assert [(e["type"], e["code"], e["retrying"]) for e in events] == [
        ("task-error", "not_found", False)
    ]
    # watch() ends on a 404 with one onError and no onDone; fetchTask() rejects.
    page.evaluate(WATCH, ["no-such-task", {"pollInterval": 100}])
    page.wait_for_function("window.seen.errors.length > 0")
    page.wait_for_timeout(400)
    seen = page.evaluate("window.seen")
    assert seen["errors"] == [
        {
            "code": "not_found",
            "message": "No task with this id (or it expired).",
            "status": 404,
            "retrying": False,
        }
    ]
    assert seen["updates"] == seen["done"] == []
    assert page.evaluate("window.handle.active") is False
    assert len(records) == 2  # one read each, no retries
    error = page.evaluate(
        "window.flaskTasks.fetchTask('no-such-task').catch((e) => [e.name, e.code, e.status])"
    )
    assert error == ["TaskApiError", "not_found", 404]
    # Pointing the element at another task watches that one.
    task_id = send(app, count, 2, 0.05)
    page.evaluate("(src) => { document.querySelector('#task-1').src = src }", f"/tasks/{task_id}")
    wait_state(page, "succeeded")
    assert text(page, "error") == ""


def test_an_event_stream_cut_mid_task_falls_back_to_polling(
    app: Flask, site: str, worker: None, events_page: Any
) -> None:
    page = events_page
    cut = CutEventStreams(app.wsgi_app)
    app.wsgi_app = cut  # type: ignore[method-assign]
    task_id = send(app, count, 20, 0.1)
    polls = Requests(page, rf"/tasks/{task_id}$")
    open_page(page, site, task_id)
    wait_state(page, "succeeded")
    assert text(page, "result") == '{"counted":20,"ok":true}'
    assert cut.streams >= 1
    assert len(polls) >= 2  # the polls that took over
    if sse_ready(app):
        assert cut.records_sent == 1  # the stream did work before it was cut


def test_server_sent_events_end_to_end(
    app: Flask, site: str, worker: None, events_page: Any
) -> None:
    if not sse_ready(app):
        pytest.skip("the events endpoint (flask_tasks/sse.py) is not implemented yet")
    page = events_page
    task_id = send(app, count, 10, 0.1)
    polls = Requests(page, rf"/tasks/{task_id}$")
    streams = Requests(page, rf"/tasks/{task_id}/events$")
    open_page(page, site)
    page.evaluate(WATCH, [task_id, {}])
    page.wait_for_function("window.seen.done.length > 0", timeout=END)
    seen = page.evaluate("window.seen")
    assert set(seen["transports"]) == {"sse"}
    currents = [r["progress"]["current"] for r in seen["updates"] if r["progress"]]
    assert len(currents) >= 3 and currents == sorted(currents) and currents[-1] == 10
    assert seen["done"][0]["state"] == "succeeded" and seen["errors"] == []
    assert seen["updates"][-1] == seen["done"][0]
    assert len(streams) == 1 and len(polls) == 0


def test_streams_beyond_the_page_limit_poll(
    app: Flask, site: str, worker: None, page: Any
) -> None:
    """Browsers give a server 6 HTTP/1.1 connections: past defaults.maxStreams, poll."""
    first, second = send(app, count, 8, 0.1), send(app, count, 20, 0.1)
    open_page(page, site)
    page.evaluate(
        """(ids) => {
          const { watch, defaults } = window.flaskTasks;
          defaults.maxStreams = 1;
          window.transports = ids.map(() => []);
          window.finished = ids.map(() => null);
          ids.forEach((id, i) => {
            const handle = watch(id, {
              pollInterval: 100,
              onUpdate: () => window.transports[i].push(handle.transport),
              onDone: (record) => { window.finished[i] = record.state },
            });
          });
        }""",
        [first, second],
    )
    page.wait_for_function("window.finished.every((state) => state !== null)", timeout=END)
    assert page.evaluate("window.finished") == ["succeeded", "succeeded"]
    transports = page.evaluate("window.transports")
    assert transports[1][0] == "polling"
    if sse_ready(app):
        assert set(transports[0]) == {"sse"}
        assert transports[1][-1] == "sse"  # a stream once the first one ended


def test_polling_when_the_browser_has_no_event_source(
    app: Flask, site: str, worker: None, page: Any
) -> None:
    page.add_init_script("delete window.EventSource")
    task_id = send(app, count, 6, 0.1)
    streams = Requests(page, r"/events$")
    polls = Requests(page, rf"/tasks/{task_id}$")
    open_page(page, site, task_id)
    page.evaluate(WATCH, [task_id, {"pollInterval": 200}])
    wait_state(page, "succeeded")
    page.wait_for_function("window.seen.done.length > 0", timeout=END)
    seen = page.evaluate("window.seen")
    assert set(seen["transports"]) == {"polling"}
    assert [r["state"] for r in seen["done"]] == ["succeeded"]
    assert seen["updates"][-1] == seen["done"][0]
    assert text(page, "result") == '{"counted":6,"ok":true}'
    assert len(streams) == 0 and len(polls) >= 4


def test_watch_is_null_safe_from_queued_to_a_null_result(app: Flask, site: str, page: Any) -> None:
    task_id = send(app, wander, 8, 0.2)  # no worker yet: it stays queued
    open_page(page, site, task_id)
    page.evaluate("document.querySelector('#task-1').setAttribute('poll-interval', '150')")
    page.evaluate(WATCH, [task_id, {"pollInterval": 150}])
    page.wait_for_function("window.seen.updates.length > 0")
    queued = page.evaluate("window.seen.updates[0]")
    assert (queued["state"], queued["progress"], queued["result"]) == ("queued", None, None)
    wait_state(page, "queued")
    bar = page.locator("#task-1").get_by_role("progressbar")
    assert bar.get_attribute("aria-valuenow") is None  # indeterminate
    assert text(page, "percent") == ""
    with start_worker(app):
        page.wait_for_function(
            "(({ record }) => record?.state === 'running' && record.progress?.current >= 1)"
            "(document.querySelector('#task-1'))",
            timeout=END,
        )
        # Running with no total: still indeterminate, with the message and no ETA.
        assert bar.get_attribute("aria-valuenow") is None
        assert text(page, "message").startswith("item ")
        assert text(page, "eta") == ""
        page.wait_for_function("window.seen.done.length > 0", timeout=END)
    seen = page.evaluate("window.seen")
    assert seen["errors"] == []
    states = [r["state"] for r in seen["updates"]]
    assert states[0] == "queued" and states[-1] == "succeeded" and "running" in states
    running = next(r for r in seen["updates"] if r["progress"])
    assert running["progress"]["total"] is None and running["progress"]["percent"] is None
    assert seen["done"][0]["result"] is None
    wait_state(page, "succeeded")
    assert text(page, "status") == "Done"
    assert not page.locator("#task-1 [part~=result]").is_visible()  # nothing to show


def test_stop_and_removal_end_callbacks_and_requests(
    app: Flask, site: str, worker: None, page: Any
) -> None:
    task_id = send(app, count, 12, 0.1)
    polls = Requests(page, rf"/tasks/{task_id}(/events)?$")
    open_page(page, site, task_id)
    page.evaluate(WATCH, [task_id, {"pollInterval": 100}])
    page.wait_for_function("window.seen.updates.some((r) => r.progress)", timeout=END)
    seen = page.evaluate(
        """() => {
          window.handle.stop();
          document.querySelector('#task-1').remove();
          return structuredClone(window.seen);
        }"""
    )
    requests_at_stop = len(polls)
    TaskChecks(app).assert_succeeded(task_id)
    page.wait_for_timeout(600)
    assert page.evaluate("window.seen") == seen
    assert seen["done"] == [] and page.evaluate("window.handle.active") is False
    assert page.evaluate("window.handle.transport") is None
    assert len(polls) == requests_at_stop


def test_aria_attributes(app: Flask, site: str, worker: None, page: Any) -> None:
    task_id = send(app, count, 40, 0.1)
    open_page(page, site, task_id, cancelable=True)
    task = page.locator("#task-1")
    page.wait_for_function(
        "document.querySelector('#task-1').record?.progress?.percent > 0", timeout=END
    )
    bar = task.get_by_role("progressbar", name="Task progress")
    assert bar.get_attribute("aria-valuemin") == "0"
    assert bar.get_attribute("aria-valuemax") == "100"
    assert 0 < int(bar.get_attribute("aria-valuenow")) < 100
    assert text(page, "percent") == f"{bar.get_attribute('aria-valuenow')}%"
    assert re.fullmatch(r"about \d+ s left|almost done", text(page, "eta"))
    status = task.get_by_role("status").first
    assert status.get_attribute("aria-live") == "polite"
    assert status.inner_text() == "Running"
    assert task.locator("[part~=outcome]").get_attribute("aria-live") == "polite"
    button = task.get_by_role("button", name="Cancel")
    assert button.evaluate("(b) => b.tagName") == "BUTTON"
    button.focus()
    page.keyboard.press("Enter")  # a real button: the keyboard works
    wait_state(page, "cancelled")
    page.evaluate("document.querySelector('#task-1').setAttribute('label', 'Export')")
    assert task.get_by_role("progressbar", name="Export").count() == 1


def test_network_errors_are_reported_and_retried(
    app: Flask, site: str, worker: None, page: Any
) -> None:
    page.add_init_script("delete window.EventSource")
    task_id = send(app, count, 5, 0.1)
    answers = iter(["abort", "503"])

    def flaky(route: Any) -> None:
        answer = next(answers, None)
        if answer == "abort":
            route.abort("connectionrefused")
        elif answer == "503":
            body = {"error": {"code": "store_unavailable", "message": "Try again shortly."}}
            route.fulfill(status=503, content_type="application/json", body=json.dumps(body))
        else:
            route.continue_()

    open_page(page, site)
    page.route(re.compile(rf"/tasks/{task_id}$"), flaky)
    page.evaluate(WATCH, [task_id, {"pollInterval": 100}])
    page.wait_for_function("window.seen.done.length > 0", timeout=END)
    seen = page.evaluate("window.seen")
    assert [(e["code"], e["status"], e["retrying"]) for e in seen["errors"]] == [
        ("network_error", 0, True),
        ("store_unavailable", 503, True),
    ]
    first, second = (e["retryIn"] for e in seen["errors"])
    assert 100 <= first < second <= 30_000  # backing off
    assert seen["done"][0]["state"] == "succeeded"


ODD_RECORDS = {
    "paused": {"state": "paused"},  # a state this client does not know, fields missing
    "nulls": {
        "state": "running",
        "progress": {
            "current": None,
            "total": None,
            "percent": None,
            "message": None,
            "eta_seconds": None,
        },
    },
    "retrying": {"state": "retrying", "attempt": 2, "error": {"type": "OSError", "message": ""}},
    "empty-failure": {"state": "failed", "error": None, "progress": None},
    "strange-progress": {"state": "running", "progress": {"current": 5, "total": 0}},
}


def test_odd_records_do_not_break_the_element(site: str, page: Any) -> None:
    """Records the server does not send today (the element must not trust the shape)."""

    def odd(route: Any) -> None:
        name = route.request.url.rsplit("/", 1)[1]
        record = {"id": name, "links": {"self": f"/tasks/{name}"}, **ODD_RECORDS[name]}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(record))

    page.add_init_script("delete window.EventSource")
    page.route(re.compile(r"/tasks/(" + "|".join(ODD_RECORDS) + ")$"), odd)
    open_page(page, site, *ODD_RECORDS)
    for index in range(1, len(ODD_RECORDS) + 1):
        page.wait_for_function(
            "(index) => document.querySelector(`#task-${index}`).record !== null", arg=index
        )
    assert text(page, "status", 1) == "paused"
    assert text(page, "status", 2) == "Running"
    assert text(page, "percent", 2) == ""
    assert text(page, "status", 3) == "Retrying (attempt 2)"
    assert text(page, "error", 3) == "OSError"
    assert text(page, "status", 4) == "Failed"
    assert text(page, "error", 4) == "Error"
    assert text(page, "percent", 5) == ""
    page.wait_for_timeout(300)  # polling the ones that are not final goes on, without errors
