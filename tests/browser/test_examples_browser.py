"""The examples' own pages in real Chromium: each example started as its README says
(``flask --app ... run`` in its folder, on the embedded default, with an empty instance
folder of its own), then used through its page's buttons and forms, as a person would.

(Not ``test_examples.py``: tests/ has no ``__init__.py`` and tests/test_examples.py holds
the quickstart's HTTP test, so pytest would refuse to collect both.)

The server-side routes of the same examples are tested in tests/test_seed_examples.py,
whose helpers start the examples here too.

``SAVE_SCREENSHOTS=1`` saves a screenshot of each example page to docs/screenshots/
(example-quickstart.png, example-seed000.png ... example-seed004.png); otherwise they go
to the test's temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from test_devworker import free_port
from test_seed_examples import EXAMPLES, call, serving
from test_seed_examples import example_env as seed_example_env

END = 20_000  # ms: a generous bound for a change to show in the page (a loaded machine)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"

# Every record a <task-progress> on the page receives, kept in window.taskUpdates.
COLLECT_UPDATES = """
window.taskUpdates = [];
document.addEventListener("task-update", (event) => {
  const record = event.detail.record;
  window.taskUpdates.push({
    id: record.id,
    state: record.state,
    percent: record.progress?.percent ?? null,
    message: record.progress?.message ?? null,
  });
});
"""


def example_env(instance: Path, **extra: str) -> dict[str, str]:
    """The example's environment: an instance folder of its own."""
    return seed_example_env(instance, **extra)


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    out = DOCS if os.environ.get("SAVE_SCREENSHOTS") == "1" else tmp_path / "shots"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture
def example_page(page: Any) -> Any:
    """The ``page`` fixture (it fails the test on a JavaScript error) at a page's width."""
    page.set_viewport_size({"width": 820, "height": 360})  # full-page shots: as tall as the page
    page.add_init_script(COLLECT_UPDATES)
    return page


def screenshot(page: Any, out: Path, name: str) -> None:
    path = out / f"example-{name}.png"
    page.screenshot(path=path, full_page=True, animations="disabled")
    assert path.stat().st_size > 10_000  # a page with something on it, not a blank one


def updates(page: Any, task_id: str) -> list[dict[str, Any]]:
    """What the page's ``<task-progress>`` received for one task, in order."""
    return [u for u in page.evaluate("window.taskUpdates") if u["id"] == task_id]


def task_id_of(bar: Any) -> str:
    """The task id a ``<task-progress>`` follows (its src is an id or a record URL)."""
    return str(bar.get_attribute("src")).rstrip("/").rsplit("/", 1)[-1]


def wait_percent(page: Any, bar: Any, low: float, high: float = 100) -> None:
    """Wait until the bar's task runs and has reported a percent in ``[low, high)``."""
    page.wait_for_function(
        "([el, low, high]) => el.record?.state === 'running'"
        " && (el.record.progress?.percent ?? -1) >= low && el.record.progress.percent < high",
        arg=[bar.element_handle(), low, high],
        timeout=END,
    )


def part(bar: Any, name: str) -> Any:
    """One part of a ``<task-progress>``'s shadow DOM (Playwright's CSS goes through it)."""
    return bar.locator(f"[part~={name}]")


def shown_result(bar: Any) -> Any:
    """The result a finished ``<task-progress>`` shows (as JSON), parsed."""
    expect(part(bar, "result")).to_be_visible()
    return json.loads(part(bar, "result").inner_text())


# -- quickstart ----------------------------------------------------------------------------


@pytest.fixture
def quickstart(tmp_path: Path) -> Iterator[str]:
    """``flask --app quickstart run`` (what ``make demo`` runs), in a copy of the folder:
    the quickstart keeps its queue in ./instance, which stays the user's."""
    folder = tmp_path / "quickstart"
    shutil.copytree(
        EXAMPLES / "quickstart", folder, ignore=shutil.ignore_patterns("instance", "__pycache__")
    )
    env = example_env(tmp_path / "unused")  # the quickstart reads no INSTANCE_PATH
    # An absolute folder: serving() runs the command there (EXAMPLES / folder is folder).
    with serving(str(folder), "quickstart", env) as (_, base):
        yield base
    assert (folder / "instance" / "tasks.sqlite3").exists()


def test_quickstart_page_adds_and_counts(quickstart: str, example_page: Any, shots: Path) -> None:
    page = example_page
    page.goto(quickstart + "/")
    page.get_by_label("a", exact=True).fill("20")
    page.get_by_label("b", exact=True).fill("22")
    page.get_by_role("button", name="Add in the background").click()
    expect(page.locator("#add-result")).to_have_text(
        re.compile(r"^task [0-9a-f-]{36}: 42$"), timeout=END
    )

    page.get_by_label("seconds").fill("3")
    page.get_by_role("button", name="Start").click()
    bar = page.locator("#count-tasks task-progress")
    wait_percent(page, bar, 30)  # 1 or 2 of 3 counted
    screenshot(page, shots, "quickstart")
    expect(bar).to_have_attribute("state", "succeeded", timeout=END)
    assert shown_result(bar) == {"counted": 3, "app": "quickstart"}
    expect(part(bar, "percent")).to_have_text("100%")
    expect(part(bar, "cancel-button")).to_be_hidden()


# -- seed 000: a long task with a progress bar ---------------------------------------------


def test_seed000_progress_bars_reach_100_and_cancel(
    tmp_path: Path, example_page: Any, shots: Path
) -> None:
    env = example_env(tmp_path, FLASK_LONGTASK_STEP_SECONDS="0.05")  # 100 steps: 5 s
    page = example_page
    with serving("seed000_progress", "app", env) as (_, base):
        page.goto(base + "/")
        start = page.get_by_role("button", name="Start a long task")
        start.click()
        first = page.locator("#tasks li").first.locator("task-progress")
        expect(first).to_have_attribute("state", "running", timeout=END)
        first_id = task_id_of(first)
        expect(first).to_have_attribute("state", "succeeded", timeout=END)
        expect(part(first, "percent")).to_have_text("100%")
        expect(part(first, "bar")).to_have_attribute("aria-valuenow", "100")
        expect(part(first, "message")).to_have_text("all done")
        assert shown_result(first) == {
            "current": 100,
            "total": 100,
            "status": "all done",
            "result": 42,
        }
        seen = updates(page, first_id)

        # A second task: the new bar comes first; Cancel stops it while it runs.
        start.click()
        expect(page.locator("#tasks li")).to_have_count(2)
        second = page.locator("#tasks li").first.locator("task-progress")
        wait_percent(page, second, 20, 80)
        screenshot(page, shots, "seed000")  # one bar done, one half-way with its Cancel
        part(second, "cancel-button").click()
        expect(second).to_have_attribute("state", "cancelled", timeout=END)
        stopped_at = second.evaluate("el => el.record.progress.percent")

        # The JSON link under the first bar: the seed's /status/<id> shape.
        status = page.locator("#tasks li").nth(1).get_by_role("link", name="status as JSON")
        assert status.get_attribute("href") == f"/status/{first_id}"
        old_shape = call(base + f"/status/{first_id}").json()

    running = [u["percent"] for u in seen if u["state"] == "running" and u["percent"]]
    assert any(0 < p < 100 for p in running), f"no progress seen on the way: {seen}"
    assert running == sorted(running)
    assert seen[-1]["state"] == "succeeded"
    assert 20 <= stopped_at < 100
    assert old_shape["state"] == "succeeded" and old_shape["result"] == 42


# -- seed 001: Flask's official pattern ----------------------------------------------------


def test_seed001_add_form_shows_the_result_and_the_tally(
    tmp_path: Path, example_page: Any, shots: Path
) -> None:
    env = example_env(tmp_path, FLASK_TASKS_SCHEDULE__tally__schedule="0.5")
    page = example_page
    with serving("seed001_official", "task_app", env) as (_, base):
        page.goto(base + "/")
        page.get_by_label("a", exact=True).fill("2")
        page.get_by_label("b", exact=True).fill("40")
        page.get_by_role("button", name="Add").click()
        output = page.locator("#add-result")
        expect(output).to_contain_text('{"ready":true,"successful":true,"value":42}', timeout=END)
        bar = page.locator("#add-task task-progress")
        expect(bar).to_have_attribute("state", "succeeded", timeout=END)
        assert shown_result(bar) == 42
        task_id = task_id_of(bar)
        assert output.inner_text().startswith(f"GET /result/{task_id}")
        # The periodic task, sent by the beat that 'flask run' starts on the embedded
        # queue; the page reads its newest run every 2 s.
        tally = page.locator("#tally")
        expect(tally).to_contain_text('"additions": 1', timeout=END)
        screenshot(page, shots, "seed001")
    assert '"sum": 42' in tally.inner_text()


# -- seed 002: the deploy page -------------------------------------------------------------

STEPS = [
    "checking the server",
    "uploading the release",
    "installing dependencies",
    "migrating the database",
    "switching traffic",
    "running the health check",
]


def test_seed002_deploy_page_shows_each_step_the_result_and_cancels(
    tmp_path: Path, example_page: Any, shots: Path
) -> None:
    env = example_env(tmp_path, FLASK_DEPLOY_STEP_SECONDS="0.6")  # 6 steps: about 4 s
    page = example_page
    with serving("seed002_extension", "deployer", env) as (_, base):
        page.goto(base + "/")
        page.get_by_label("Operator").fill("ana")
        row = {server: page.locator("tr", has_text=server) for server in ("web-1", "web-2")}
        row["web-1"].get_by_role("button", name="Deploy").click()
        row["web-2"].get_by_label("version for web-2").fill("2.5.0")
        row["web-2"].get_by_role("button", name="Deploy").click()
        done, stopped = (row[server].locator("task-progress") for server in ("web-1", "web-2"))

        wait_percent(page, stopped, 100 / 6)  # web-2 is past its first step
        part(stopped, "cancel-button").click()
        expect(stopped).to_have_attribute("state", "cancelled", timeout=END)
        expect(part(stopped, "status")).to_have_text("Cancelled")
        expect(part(stopped, "cancel-button")).to_be_hidden()

        expect(done).to_have_attribute("state", "succeeded", timeout=END)
        expect(part(done, "message")).to_have_text("web-1 runs 2.4.1")
        expect(part(done, "percent")).to_have_text("100%")
        result = shown_result(done)

        page.locator("tr", has_text="worker-1").get_by_role("button", name="Deploy").click()
        wait_percent(page, page.locator("tr", has_text="worker-1").locator("task-progress"), 1)
        screenshot(page, shots, "seed002")  # deployed, cancelled, and one on its way
        web1 = updates(page, task_id_of(done))
        web2 = updates(page, task_id_of(stopped))

    # The task read the request it was sent from: the operator header the page sends, the
    # method, the path and the version in the query string.
    assert result == {
        "server": "web-1",
        "version": "2.4.1",
        "operator": "ana",
        "requested": "POST /servers/web-1/deploy?version=2.4.1",
        "language": result["language"],  # whatever Chromium's Accept-Language prefers
    }
    # Each step shows as it runs, in order (a step the page's once-every-0.25 s stream
    # happens to miss on a loaded machine is allowed, not a step out of order).
    messages = [u["message"] for u in web1 if u["message"]]
    expected = [f"web-1: {step}" for step in STEPS] + ["web-1 runs 2.4.1"]
    shown = list(dict.fromkeys(messages))
    assert shown == [m for m in expected if m in shown], shown
    assert len(shown) >= 5 and shown[-1] == "web-1 runs 2.4.1", shown
    assert web2[-1]["state"] == "cancelled" and web2[-1]["message"].startswith("web-2: ")
    assert web2[-1]["percent"] < 100


# -- seed 003: sign up, then the mailbox ---------------------------------------------------


def test_seed003_signup_then_the_mailbox_shows_the_email(
    tmp_path: Path, example_page: Any, shots: Path
) -> None:
    env = example_env(tmp_path, FLASK_MAIL_PORT=str(free_port()))
    page = example_page
    with serving("seed003_layout", "manage", env) as (_, base):
        page.goto(base + "/mailbox")
        expect(page.locator("article")).to_have_count(0)
        expect(page.get_by_text("Nothing yet.")).to_be_visible()

        page.get_by_role("link", name="Sign up").click()
        page.get_by_label("Name").fill("Bea")
        page.get_by_label("Email").fill("bea@example.test")
        page.get_by_role("button", name="Create my account").click()
        expect(page).to_have_url(re.compile(r"/welcome/[0-9a-f-]{36}$"))
        expect(page.get_by_role("heading")).to_have_text("Your account is ready")
        bar = page.locator("task-progress")
        expect(bar).to_have_attribute("state", "succeeded", timeout=END)
        sent = page.get_by_role("link", name="Sent: see the mailbox")
        expect(sent).to_be_visible()
        screenshot(page, shots, "seed003-welcome")

        sent.click()
        expect(page).to_have_url(base + "/mailbox")
        message = page.locator("article")
        expect(message).to_have_count(1)
        expect(message.get_by_role("heading")).to_have_text("Welcome aboard")
        expect(message.locator(".to")).to_have_text("bea@example.test")
        expect(message.locator("pre")).to_contain_text("Hello Bea,")
        screenshot(page, shots, "seed003")
    assert len(os.listdir(tmp_path / "mailbox" / "new")) == 1


# -- seed 004: tasks declared before the app -----------------------------------------------


def test_seed004_page_shows_the_task_reading_the_app_config(
    tmp_path: Path, example_page: Any, shots: Path
) -> None:
    env = example_env(tmp_path)  # TEST_FOR_APP_CONTEXT as create_app() sets it
    page = example_page
    with serving("seed004_deferred", "manage", env) as (_, base):
        page.goto(base + "/")
        expect(page.get_by_role("heading", name="Hello, world!")).to_be_visible()
        page.get_by_label("x").fill("1")
        page.get_by_label("y").fill("2")
        page.get_by_role("button", name="Send by name, through current_app").click()
        expect(page.locator("#tasks li")).to_have_count(1)
        page.get_by_label("x").fill("3")
        page.get_by_label("y").fill("4")
        page.get_by_role("button", name="Send with the typed handle").click()
        items = page.locator("#tasks li")
        expect(items).to_have_count(2)
        for item in (items.nth(0), items.nth(1)):
            expect(item.locator("task-progress")).to_have_attribute(
                "state", "succeeded", timeout=END
            )
        screenshot(page, shots, "seed004")
        typed, by_name = (
            (item.locator("code").first.inner_text(), shown_result(item.locator("task-progress")))
            for item in (items.nth(0), items.nth(1))
        )
    config = {"TEST_FOR_APP_CONTEXT": "read from the app config, inside the task", "app": "app"}
    assert typed == ("my_add.delay(x, y)", {"sum": 7, **config})
    assert by_name == (
        "current_app.extensions['celery'].tasks['app.celerytasks.my_add']",
        {"sum": 3, **config},
    )
