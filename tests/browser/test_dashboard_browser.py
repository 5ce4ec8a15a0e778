"""The dashboard in real Chromium, against a real app, record store and worker: the list
with live progress, filters, the Cancel and Retry buttons, and the docs' screenshots.

(Not ``test_dashboard.py``: tests/ has no ``__init__.py``, and that name is taken by the
dashboard's server-side tests, so pytest would refuse to collect both.)

``SAVE_SCREENSHOTS=1`` saves the screenshots to docs/screenshots/ (dashboard.png,
dashboard-task.png); otherwise they go to the test's temporary directory.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, jsonify, request

from flask_tasks import Tasks, TaskState, progress
from flask_tasks.testing import TaskChecks, start_worker

END = 15_000  # ms: a generous bound for a change to show in the page
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CSRF = "csrf-token-42"

tasks = Tasks()
FLAKY = {"fail": True}


@tasks.task(name="reports.import_rows")
def import_rows(n: int, delay: float) -> dict[str, Any]:
    """Count to ``n``, reporting progress, and return a small dict."""
    for i in range(1, n + 1):
        time.sleep(delay)
        progress(i, n, message=f"row {i} of {n}")
    return {"rows": n}


@tasks.task(name="mail.send_newsletter")
def send_newsletter(issue: str) -> str:
    """Fails while FLAKY["fail"] is set."""
    time.sleep(0.05)
    if FLAKY["fail"]:
        raise ConnectionError(f"the mail server refused issue {issue}")
    return f"issue {issue} sent"


@tasks.owner_loader
def owner_from_header() -> str | None:
    return request.headers.get("X-User")


@tasks.authorize
def staff(action: str, record: Any) -> bool:
    return True  # who may do what is tested in tests/test_dashboard.py


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    """The dashboard on the embedded default; state changes need the CSRF token."""
    app = make_app(TASKS_DASHBOARD=True)
    tasks.init_app(app)
    app.jinja_env.globals["csrf_token"] = lambda: CSRF  # as Flask-WTF's CSRFProtect does

    @app.before_request
    def check_csrf() -> Any:
        if request.method == "POST" and request.headers.get("X-CSRFToken") != CSRF:
            return jsonify({"error": {"code": "csrf", "message": "CSRF token missing."}}), 400
        return None

    return app


@pytest.fixture
def site(app: Flask, live_server: Any) -> Iterator[str]:
    with live_server(app) as url:
        yield url + "/tasks/dashboard/"


@pytest.fixture
def worker(app: Flask) -> Iterator[None]:
    with start_worker(app):
        yield


def send(app: Flask, task: Any, *args: Any, user: str | None = "alice", **options: Any) -> str:
    with app.test_request_context(headers={"X-User": user} if user else {}):
        return str(task.apply_async(args, **options).id)


def row(page: Any, task_id: str) -> Any:
    return page.locator(f'tr[data-task-id="{task_id}"]')


def wait_row_state(page: Any, task_id: str, state: str) -> None:
    page.wait_for_function(
        "([id, state]) => document.querySelector(`tr[data-task-id='${id}'] [data-state]`)"
        "?.dataset.state === state",
        arg=[task_id, state],
        timeout=END,
    )


def shown_ids(page: Any) -> list[str]:
    return list(
        page.eval_on_selector_all("tr[data-task-id]", "rows => rows.map(r => r.dataset.taskId)")
    )


def test_the_list_shows_live_progress_and_state(
    app: Flask, site: str, worker: None, page: Any
) -> None:
    done = send(app, import_rows, 2, 0.0)
    TaskChecks(app).wait(done)
    running = send(app, import_rows, 12, 0.15)
    page.goto(site)
    assert shown_ids(page) == [running, done]
    element = row(page, running).locator("task-progress")
    page.wait_for_function(
        "el => (el.record?.progress?.percent ?? 0) > 0", arg=element.element_handle(), timeout=END
    )
    wait_row_state(page, running, "running")
    assert row(page, running).locator(".state").inner_text() == "Running"
    assert "row " in element.locator("[part~=message]").inner_text()
    wait_row_state(page, running, "succeeded")
    assert row(page, running).locator(".state").inner_text() == "Succeeded"
    assert element.locator("[part~=result]").inner_text() == '{"rows":12}'
    assert row(page, done).locator(".outcome").inner_text() == '{"rows": 2}'
    # The counts are links that filter the list.
    page.get_by_role("link", name=re.compile(r"^Succeeded \d+$")).click()
    page.wait_for_url(re.compile(r"\?state=succeeded$"))
    assert shown_ids(page) == [running, done]


def test_filtering_by_state_and_name(app: Flask, site: str, worker: None, page: Any) -> None:
    rows = send(app, import_rows, 1, 0.0)
    failed = send(app, send_newsletter, "2026-11", user="bob")
    checks = TaskChecks(app)
    checks.wait(rows)
    checks.wait(failed)
    page.goto(site)
    assert shown_ids(page) == [failed, rows]

    page.get_by_label("State", exact=True).select_option("failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"state=failed"))
    assert shown_ids(page) == [failed]
    assert row(page, failed).locator(".outcome").inner_text() == (
        "ConnectionError: the mail server refused issue 2026-11"
    )

    page.get_by_label("State", exact=True).select_option("")
    page.get_by_label("Task name", exact=True).fill(import_rows.name)
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url(re.compile(r"name="))
    assert shown_ids(page) == [rows]
    page.get_by_role("link", name="Clear filters").click()
    page.wait_for_url(re.compile(r"/dashboard/$"))
    assert shown_ids(page) == [failed, rows]


def test_the_cancel_buttons(app: Flask, site: str, worker: None, page: Any) -> None:
    queued = send(app, import_rows, 1, 0.0, queue="nobody-consumes-this")
    running = send(app, import_rows, 200, 0.05)
    page.goto(site)
    wait_row_state(page, running, "running")
    row(page, queued).get_by_role("button", name="Cancel").click()
    wait_row_state(page, queued, "cancelled")  # a queued task: at once

    page.goto(f"{site}task/{running}")
    live = page.locator("#live-progress")
    page.wait_for_function("el => el.record?.progress", arg=live.element_handle(), timeout=END)
    live.get_by_role("button", name="Cancel").click()
    # It stops at its next progress report; the page then reloads with the final record.
    page.wait_for_selector("h1 .state-cancelled", timeout=END)
    assert page.locator("#live-progress").count() == 0
    assert "<dt>Cancel requested</dt><dd>yes</dd>" in page.content()
    TaskChecks(app).assert_cancelled(running)


def test_the_retry_button(app: Flask, site: str, worker: None, page: Any) -> None:
    FLAKY["fail"] = True
    try:
        failed = send(app, send_newsletter, "2026-12", user="bob")
        TaskChecks(app).assert_failed(failed, ConnectionError)
        page.goto(f"{site}task/{failed}")
        assert page.locator("h1 .state").inner_text() == "Failed"
        assert "the mail server refused issue 2026-12" in page.locator(".traceback").inner_text()
        FLAKY["fail"] = False
        page.get_by_role("button", name="Retry").click()
        page.wait_for_url(re.compile(rf"retry_of={failed}$"))
        new = page.url.split("/task/")[1].split("?")[0]
        record = TaskChecks(app).assert_succeeded(new, "issue 2026-12 sent")
    finally:
        FLAKY["fail"] = True
    assert new != failed
    assert record.owner == "bob"
    # The new task's page, reloaded once the task ended.
    page.wait_for_selector("h1 .state-succeeded", timeout=END)
    notice = page.get_by_role("status").filter(has_text="Sent again from task")
    assert notice.get_by_role("link").inner_text() == failed
    assert page.locator(".json.result").inner_text() == '"issue 2026-12 sent"'
    assert "owned by bob" in page.locator("#retry-help").inner_text()


def test_a_task_that_ends_before_the_dashboard_script_runs_still_reloads(
    app: Flask, site: str, worker: None, page: Any
) -> None:
    """The page's `<task-progress>` may see the end while dashboard.js is still loading (a
    loaded machine): the script then finds the element final and reloads the page."""
    task_id = send(app, import_rows, 10, 0.05, user="alice")

    def hold_the_script(route: Any) -> None:
        TaskChecks(app).wait(task_id)
        time.sleep(1.0)  # and let the element's watch see the end
        route.continue_()

    page.route("**/dashboard.js", hold_the_script)
    page.goto(f"{site}task/{task_id}")
    page.wait_for_selector("h1 .state-succeeded", timeout=END)
    assert page.locator("task-progress[data-reload-when-done]").count() == 0


def test_retry_is_disabled_with_a_reason_for_a_task_that_never_started(
    app: Flask, site: str, page: Any
) -> None:
    queued = send(app, import_rows, 1, 0.0, queue="nobody-consumes-this")
    with app.app_context():
        tasks.cancel(queued)
    page.goto(f"{site}task/{queued}")
    button = page.get_by_role("button", name="Retry")
    assert button.is_disabled()
    assert "cancelled before it started" in page.locator("#retry-why").inner_text()


def test_screenshots(app: Flask, live_server: Any, page: Any, tmp_path: Path) -> None:
    out = DOCS if os.environ.get("SAVE_SCREENSHOTS") == "1" else tmp_path
    out.mkdir(parents=True, exist_ok=True)
    checks = TaskChecks(app)
    with live_server(app) as url, start_worker(app):
        finished = [
            send(app, import_rows, 40, 0.0, user="alice"),
            send(app, send_newsletter, "2026-11", user="bob"),
            send(app, import_rows, 5, 0.0, user=None),
        ]
        for task_id in finished:
            checks.wait(task_id)
        cancelled = send(app, import_rows, 3, 0.0, user="carol", queue="nobody-consumes-this")
        with app.app_context():
            tasks.cancel(cancelled)
        running = send(app, import_rows, 400, 0.05, user="alice")
        send(app, import_rows, 10, 0.0, user="dave", queue="nobody-consumes-this")
        # Reduced motion: a queued task's "waiting" animation would otherwise be frozen
        # mid-sweep by the screenshot and read as partial progress.
        page.emulate_media(reduced_motion="reduce")
        page.goto(url + "/tasks/dashboard/")
        element = row(page, running).locator("task-progress").element_handle()
        page.wait_for_function(
            "el => (el.record?.progress?.percent ?? 0) > 8", arg=element, timeout=END
        )
        page.screenshot(path=out / "dashboard.png", full_page=True, animations="disabled")
        page.goto(f"{url}/tasks/dashboard/task/{finished[1]}")
        page.screenshot(path=out / "dashboard-task.png", full_page=True)
        with app.app_context():
            tasks.cancel(running)
        checks.wait(running)
    assert (out / "dashboard.png").stat().st_size > 10_000
    record = checks.record(cancelled)
    assert record is not None and record.state is TaskState.CANCELLED
