"""The dashboard: access through the authorize hook, the task list (filters, counts,
pages), a task's page, Retry, cross-site refusals and HTML escaping."""

from __future__ import annotations

import ast
import html
import re
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from flask.testing import FlaskClient

from conftest import AppFactory
from flask_tasks import ConfigError, Tasks, TaskState
from flask_tasks.dashboard import data
from flask_tasks.testing import TaskChecks, start_worker

tasks = Tasks()

ADMIN = {"X-Role": "admin"}
VIEWER = {"X-Role": "viewer"}  # may open the dashboard, and nothing more
FLAKY = {"fail": True}


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
def explode(message: str) -> None:
    raise ValueError(message)


@tasks.task
def echo(value: Any) -> Any:
    return value


@tasks.task
def flaky(key: str, *, times: int = 1) -> dict[str, Any]:
    """Fails while FLAKY["fail"] is set; then echoes its arguments."""
    if FLAKY["fail"]:
        raise RuntimeError(f"flaky {key}")
    return {"key": key, "times": times}


@tasks.owner_loader
def owner_from_header() -> str | None:
    return request.headers.get("X-User")


@tasks.authorize
def by_role(action: str, record: Any) -> bool:
    role = request.headers.get("X-Role")
    if role == "admin":
        return True
    if role == "viewer":
        return action == "dashboard"
    return False


EAGER = {"CELERY_TASK_ALWAYS_EAGER": True, "CELERY_TASK_EAGER_PROPAGATES_EXCEPTIONS": False}


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    """Eager tasks on the embedded default, with the dashboard on."""
    app = make_app(TASKS_DASHBOARD=True, **EAGER)
    tasks.init_app(app)
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def send(app: Flask, task: Any, *args: Any, user: str | None = "alice", **kwargs: Any) -> str:
    headers = {"X-User": user} if user else {}
    with app.test_request_context(headers=headers):
        return str(task.apply_async(args, kwargs).id)


def status(client: FlaskClient, path: str, headers: dict[str, str]) -> int:
    with client.get(path, headers=headers) as response:
        return response.status_code


def page(client: FlaskClient, path: str = "", headers: dict[str, str] | None = None) -> str:
    response = client.get(
        f"/tasks/dashboard/{path}", headers=ADMIN if headers is None else headers
    )
    assert response.status_code == 200, response.text
    return response.text


def listed(text: str) -> list[str]:
    """The task ids of the list's rows, top to bottom."""
    return re.findall(r'<tr class="task" data-task-id="([^"]+)"', text)


def count_of(text: str, state: str) -> int:
    match = re.search(
        rf'class="count count-{state}"[^>]*>\s*<span class="count-label">[^<]*</span>\s*'
        r'<span class="count-number">(\d+)</span>',
        text,
    )
    assert match, f"no count for {state}"
    return int(match.group(1))


def retry(client: FlaskClient, task_id: str, headers: dict[str, str] | None = None) -> Any:
    return client.post(
        f"/tasks/dashboard/task/{task_id}/retry",
        json={},
        headers=ADMIN if headers is None else headers,
    )


# -- access ----------------------------------------------------------------------------------


def test_the_hook_decides_and_refusal_is_403(app: Flask, client: FlaskClient) -> None:
    task_id = send(app, add, 1, 2)
    paths = [
        "/tasks/dashboard/",
        f"/tasks/dashboard/task/{task_id}",
        "/tasks/dashboard/task/no-such-task",  # the same 403: nothing leaks about ids
        "/tasks/dashboard/static/dashboard.js",
    ]
    for headers in ({}, {"X-Role": "nobody"}, {"X-User": "alice"}):
        for path in paths:
            assert status(client, path, headers) == 403, (path, headers)
        assert retry(client, task_id, headers=headers).status_code == 403
    for path in paths[:2] + paths[3:]:
        assert status(client, path, ADMIN) == 200, path
        assert status(client, path, VIEWER) == 200, path
    assert status(client, paths[2], ADMIN) == 404


def test_a_failing_hook_refuses(make_app: AppFactory) -> None:
    app = make_app(TASKS_DASHBOARD=True)
    ext = Tasks()

    @ext.authorize
    def broken(action: str, record: Any) -> bool:
        raise RuntimeError("the user database is down")

    ext.init_app(app)
    assert app.test_client().get("/tasks/dashboard/").status_code == 403


def test_no_hook_outside_debug_is_a_config_error(make_app: AppFactory) -> None:
    with pytest.raises(ConfigError, match="authorize"):
        Tasks(make_app(TASKS_DASHBOARD=True))
    with pytest.raises(ConfigError, match="TASKS_API"):
        tasks.init_app(make_app(TASKS_DASHBOARD=True, TASKS_API=False))


def test_debug_mode_without_a_hook_lets_everyone_in(make_app: AppFactory) -> None:
    app = make_app(TASKS_DASHBOARD=True, DEBUG=True, **EAGER)
    ext = Tasks()

    @ext.task
    def double(n: int) -> int:
        return n * 2

    ext.init_app(app)
    client = app.test_client()
    with app.test_request_context():
        task_id = double.delay(21).id
    assert task_id in listed(page(client, headers={}))
    assert "42" in page(client, f"task/{task_id}", headers={})
    new = retry(client, task_id, headers={})
    assert new.status_code == 201
    app.debug = False  # debug turned off later: the hook is required again
    assert client.get("/tasks/dashboard/").status_code == 403


def test_the_dashboard_follows_the_url_prefix(make_app: AppFactory) -> None:
    app = make_app(TASKS_DASHBOARD=True, TASKS_URL_PREFIX="/admin/jobs")
    tasks.init_app(app)
    client = app.test_client()
    response = client.get("/admin/jobs/dashboard/", headers=ADMIN)
    assert response.status_code == 200
    assert 'src="/admin/jobs/static/flask-tasks.js?v=' in response.text
    assert 'href="/admin/jobs/dashboard/static/dashboard.css"' in response.text
    redirect = client.get("/admin/jobs/dashboard", headers=ADMIN)
    assert redirect.status_code == 308
    assert redirect.headers["Location"].endswith("/admin/jobs/dashboard/")


def test_pages_are_not_cached_framed_or_scripted_from_elsewhere(client: FlaskClient) -> None:
    response = client.get("/tasks/dashboard/", headers=ADMIN)
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "<script>" not in response.text  # no inline script: the CSP allows none


# -- the list --------------------------------------------------------------------------------


def test_every_users_tasks_newest_first_with_counts(make_app: AppFactory, broker: str) -> None:
    app = make_app(broker, TASKS_DASHBOARD=True, **EAGER)
    tasks.init_app(app)
    client = app.test_client()
    ids = [
        send(app, add, 1, 1, user="alice"),
        send(app, add, 2, 2, user="bob"),
        send(app, explode, "no", user=None),
        send(app, add, 3, 3, user="alice"),
    ]
    text = page(client)
    assert listed(text) == list(reversed(ids))
    assert count_of(text, "all") == 4
    assert count_of(text, "succeeded") == 3
    assert count_of(text, "failed") == 1
    assert count_of(text, "queued") == 0
    assert ">alice<" in text and ">bob<" in text
    assert "ValueError: no" in text  # a failed task's error, in its row
    assert '<a class="task-name" href="/tasks/dashboard/task/' in text


def test_filters_by_state_and_name(app: Flask, client: FlaskClient) -> None:
    added = [send(app, add, i, i) for i in range(3)]
    failed = [send(app, explode, f"bad {i}") for i in range(2)]
    echoed = send(app, echo, "hi")

    text = page(client, "?state=failed")
    assert listed(text) == list(reversed(failed))
    assert '<option value="failed" selected>' in text
    # The counts stay those of every task, and link to each state's list.
    assert count_of(text, "all") == 6
    assert 'href="/tasks/dashboard/?state=succeeded"' in text
    assert re.search(r'class="count count-failed"\s+aria-current="page"', text)

    assert listed(page(client, f"?name={add.name}")) == list(reversed(added))
    assert listed(page(client, f"?name={echo.name}&state=succeeded")) == [echoed]
    assert listed(page(client, f"?name={echo.name}&state=failed")) == []
    by_name = page(client, f"?name={add.name}")
    # State links keep the name filter; "Clear filters" drops it.
    assert f'href="/tasks/dashboard/?state=failed&amp;name={add.name}"' in by_name
    assert 'href="/tasks/dashboard/">Clear filters</a>' in by_name
    assert f'<option value="{add.name}">' in by_name  # the task names to pick from
    assert "No tasks match these filters." in page(client, "?name=nothing.like.this")


def test_cursor_pagination(make_app: AppFactory, broker: str) -> None:
    app = make_app(broker, TASKS_DASHBOARD=True, **EAGER)
    tasks.init_app(app)
    client = app.test_client()
    ids = [send(app, add, i, 0) for i in range(12)]
    seen: list[str] = []
    url = "/tasks/dashboard/?limit=5"
    pages = 0
    while url:
        text = page(client, url.removeprefix("/tasks/dashboard/"))
        seen += listed(text)
        pages += 1
        if pages > 1:
            assert 'href="/tasks/dashboard/?limit=5">Newest tasks</a>' in text
        match = re.search(r'<a rel="next" href="([^"]+)">Older tasks</a>', text)
        url = html.unescape(match.group(1)) if match else ""
    assert pages == 3
    assert seen == list(reversed(ids))


@pytest.mark.parametrize(
    "query", ["state=sleeping", "limit=0", "limit=101", "limit=ten", "cursor=garbage!"]
)
def test_a_bad_query_is_a_400_page(client: FlaskClient, query: str) -> None:
    response = client.get(f"/tasks/dashboard/?{query}", headers=ADMIN)
    assert response.status_code == 400
    assert "Back to all tasks" in response.text


def test_unfinished_tasks_are_live(make_app: AppFactory) -> None:
    app = make_app(TASKS_DASHBOARD=True)  # no worker: tasks stay queued
    tasks.init_app(app)
    client = app.test_client()
    mine = send(app, add, 1, 2, user="alice")
    text = page(client)
    assert re.search(
        rf'<task-progress src="/tasks/{mine}" cancelable\s+label="Progress of {add.name}">',
        text,
    )
    assert '<script type="module" src="/tasks/static/flask-tasks.js?v=' in text
    assert "Queued" in text  # what shows without JavaScript

    # A user the hook lets into the dashboard but not at others' tasks through the API:
    # no live element (it would say "not found") and no cancel button.
    viewer = page(client, headers=VIEWER)
    assert "<task-progress" not in viewer
    assert "Not live: the HTTP API does not show you this task." in viewer
    detail = page(client, f"task/{mine}", headers=VIEWER)
    assert "<task-progress" not in detail and "Not live, and no Cancel button" in detail


def test_cancel_from_the_dashboard_goes_through_the_api(make_app: AppFactory) -> None:
    app = make_app(TASKS_DASHBOARD=True)
    tasks.init_app(app)
    client = app.test_client()
    task_id = send(app, add, 1, 2, user="alice")
    assert f'<task-progress id="live-progress" src="/tasks/{task_id}" cancelable' in page(
        client, f"task/{task_id}"
    )
    # What the element's Cancel button sends, as the staff user:
    cancel = f"/tasks/{task_id}/cancel"
    assert client.post(cancel, data={"x": "1"}, headers=ADMIN).status_code == 415
    assert client.post(cancel, json={}, headers=VIEWER).status_code == 404  # API rules
    response = client.post(cancel, json={}, headers=ADMIN)
    assert response.status_code == 202
    assert response.get_json()["state"] == "cancelled"
    assert task_id in listed(page(client, "?state=cancelled"))


# -- a task's page ---------------------------------------------------------------------------


def test_a_failed_tasks_page_shows_every_field_and_the_traceback(
    app: Flask, client: FlaskClient
) -> None:
    task_id = send(app, explode, "the input is bad", user="alice")
    record = TaskChecks(app).record(task_id)
    assert record is not None and record.started_at and record.finished_at
    text = page(client, f"task/{task_id}")
    assert app.debug is False  # the traceback shows all the same: the dashboard is for staff
    for shown in (
        task_id,
        explode.name,
        '<span class="state state-failed" data-state="failed">Failed</span>',
        "(Celery: <code>FAILURE</code>)",
        '<strong class="error-type">ValueError</strong>',
        '<span class="error-message">the input is bad</span>',
        "Traceback (most recent call last)",
        "<dt>Owner</dt><dd>alice</dd>",
        "<dt>Queue</dt><dd><code>celery</code></dd>",
        "<dt>Attempt</dt><dd>1</dd>",
        "<dt>Cancel requested</dt><dd>no</dd>",
        f'<time datetime="{record.submitted_at.isoformat()}">',
        f'<time datetime="{record.started_at.isoformat()}">',
        f'<time datetime="{record.finished_at.isoformat()}">',
        "<code>[\n  &#34;the input is bad&#34;\n]</code>",  # the arguments
    ):
        assert shown in text, shown
    assert "<task-progress" not in text  # finished: nothing live


def test_a_succeeded_tasks_page_shows_the_result_as_pretty_json(
    app: Flask, client: FlaskClient
) -> None:
    task_id = send(app, echo, {"rows": 3, "names": ["a", "b"]})
    text = page(client, f"task/{task_id}")
    shown = re.search(r'<pre class="json result"><code>(.*?)</code></pre>', text, re.S)
    assert shown is not None
    assert (
        html.unescape(shown.group(1)) == '{\n  "rows": 3,\n  "names": [\n    "a",\n    "b"\n  ]\n}'
    )
    assert "<dt>Owner</dt><dd>alice</dd>" in text


def test_an_unknown_task_is_a_404_page(client: FlaskClient) -> None:
    response = client.get("/tasks/dashboard/task/no-such-task", headers=ADMIN)
    assert response.status_code == 404
    assert "No such task" in response.text
    long = client.get("/tasks/dashboard/task/" + "x" * 300, headers=ADMIN)
    assert long.status_code == 404


def test_task_data_is_escaped(app: Flask, client: FlaskClient) -> None:
    script = "<script>alert(1)</script>"
    ids = [
        send(app, echo, script, user='<img src=x onerror="alert(2)">'),
        send(app, explode, f"{script} in the error"),
        send(app, echo, {"html": script}),
    ]
    texts = [page(client), *(page(client, f"task/{i}") for i in ids)]
    texts.append(page(client, f"task/{ids[0]}?retry_of=%3Cscript%3Ealert(3)%3C/script%3E"))
    texts.append(page(client, "?name=%3Cscript%3Ealert(4)%3C/script%3E"))
    for text in texts:
        assert "<script>alert" not in text
        assert "<img src=x" not in text
        assert "&lt;script&gt;alert(" in text


def test_the_csrf_token_is_put_where_the_scripts_find_it(app: Flask, client: FlaskClient) -> None:
    assert 'name="csrf-token"' not in page(client)
    app.jinja_env.globals["csrf_token"] = lambda: "token-123"  # as Flask-WTF does
    assert '<meta name="csrf-token" content="token-123">' in page(client)


def test_a_store_that_is_down_is_a_503_page(make_app: AppFactory) -> None:
    app = make_app(TASKS_DASHBOARD=True, TASKS_STORE_URL="redis://127.0.0.1:1/0")
    tasks.init_app(app)
    client = app.test_client()
    for path in ("/tasks/dashboard/", "/tasks/dashboard/task/some-id"):
        response = client.get(path, headers=ADMIN)
        assert response.status_code == 503
        assert "Task records are unavailable" in response.text


# -- retry -----------------------------------------------------------------------------------


def test_retry_runs_a_failed_task_again_with_its_arguments_and_owner(
    make_app: AppFactory,
) -> None:
    app = make_app(TASKS_DASHBOARD=True)
    tasks.init_app(app)
    client = app.test_client()
    checks = TaskChecks(app)
    FLAKY["fail"] = True
    try:
        with start_worker(app):
            first = send(app, flaky, "k1", user="alice", times=3)
            checks.assert_failed(first, RuntimeError, match="flaky k1")
            text = page(client, f"task/{first}")
            assert f'data-retry-url="/tasks/dashboard/task/{first}/retry"' in text
            assert "owned by <strong>alice</strong>" in text
            FLAKY["fail"] = False
            response = retry(client, first)
            assert response.status_code == 201
            body = response.get_json()
            new = body["id"]
            assert new != first
            assert body["url"] == f"/tasks/dashboard/task/{new}?retry_of={first}"
            assert response.headers["Location"] == body["url"]
            record = checks.assert_succeeded(new, {"key": "k1", "times": 3})
    finally:
        FLAKY["fail"] = True
    assert record.name == flaky.name
    assert record.owner == "alice"  # not the staff user who pressed Retry
    original = checks.record(first)
    assert original is not None and original.state is TaskState.FAILED  # left as it was
    shown = page(client, body["url"].removeprefix("/tasks/dashboard/"))
    assert f'Sent again from task\n  <a href="/tasks/dashboard/task/{first}">' in shown


def test_retry_refusals(make_app: AppFactory) -> None:
    app = make_app(TASKS_DASHBOARD=True)  # no worker: tasks stay queued
    tasks.init_app(app)
    client = app.test_client()
    queued = send(app, add, 1, 2)

    refused = retry(client, queued)
    assert refused.status_code == 409
    assert refused.get_json()["error"]["code"] == "not_retryable"

    with app.app_context():
        tasks.cancel(queued)  # cancelled while queued: Celery never kept its arguments
    text = page(client, f"task/{queued}")
    assert re.search(
        r'<button type="button" class="retry" aria-describedby="retry-why" disabled>', text
    )
    assert "cancelled before it started" in text
    refused = retry(client, queued)
    assert refused.status_code == 409
    assert "cancelled before it started" in refused.get_json()["error"]["message"]

    url = f"/tasks/dashboard/task/{queued}/retry"
    form = client.post(url, data={"x": "1"}, headers=ADMIN)  # what a cross-site form sends
    assert form.status_code == 415
    assert client.post(url, headers=ADMIN).status_code == 415
    assert client.post(url, headers={**ADMIN, "X-Requested-With": "fetch"}).status_code == 409
    assert client.get(url, headers=ADMIN).status_code in (404, 405)
    assert retry(client, "no-such-task").status_code == 404
    assert retry(client, queued, headers=VIEWER).status_code == 403  # "retry" is refused


def test_retry_is_offered_only_to_whom_the_hook_allows(app: Flask, client: FlaskClient) -> None:
    task_id = send(app, explode, "once")
    assert 'data-retry-url="' in page(client, f"task/{task_id}", headers=ADMIN)
    viewer = page(client, f"task/{task_id}", headers=VIEWER)
    assert 'data-retry-url="' not in viewer
    assert "the app&#39;s authorize hook refuses the &#39;retry&#39; action" in viewer
    assert retry(client, task_id, headers=VIEWER).status_code == 403


def test_retry_in_eager_mode_and_for_every_store(make_app: AppFactory, broker: str) -> None:
    app = make_app(broker, TASKS_DASHBOARD=True, **EAGER)
    tasks.init_app(app)
    client = app.test_client()
    first = send(app, explode, "again", user="bob")
    response = retry(client, first)
    assert response.status_code == 201
    record = TaskChecks(app).assert_failed(response.get_json()["id"], ValueError, match="again")
    assert record.owner == "bob"
    ownerless = send(app, add, 2, 3, user=None)
    again = TaskChecks(app).assert_succeeded(retry(client, ownerless).get_json()["id"], 5)
    assert again.owner is None  # not the staff user's


def test_retry_of_a_task_only_the_workers_know(make_app: AppFactory) -> None:
    """Sent by name (send_task) to the worker app, with a record and the owner."""
    worker_tasks = Tasks()
    worker_tasks.owner_loader(owner_from_header)

    @worker_tasks.task(name="reports.build")
    def build(report_id: int, fmt: str = "pdf") -> str:
        return f"report {report_id} as {fmt}"

    worker_app = make_app()  # shares the embedded queue and store with the web app
    worker_tasks.init_app(worker_app)
    web = make_app(TASKS_DASHBOARD=True)
    tasks.init_app(web)
    checks = TaskChecks(web)
    with start_worker(worker_app):
        first = send(worker_app, build, 7, user="carol", fmt="csv")
        checks.assert_succeeded(first, "report 7 as csv")
        response = retry(web.test_client(), first)
        assert response.status_code == 201, response.text
        new = response.get_json()["id"]
        record = checks.assert_succeeded(new, "report 7 as csv")
    assert record.name == "reports.build"
    assert record.owner == "carol"


def test_retry_with_arguments_the_task_no_longer_takes(make_app: AppFactory) -> None:
    old, new = Tasks(), Tasks()

    @old.task(name="reports.export")
    def export_v1(report_id: int, fmt: str) -> str:
        return fmt

    @new.task(name="reports.export")
    def export_v2(report_id: int) -> str:
        return "pdf"

    new.authorize(lambda action, record: True)
    before = make_app(**EAGER)
    old.init_app(before)
    task_id = send(before, export_v1, 1, fmt="csv")
    after = make_app(TASKS_DASHBOARD=True, **EAGER)  # the same store, a newer deployment
    new.init_app(after)
    response = retry(after.test_client(), task_id)
    assert response.status_code == 422
    error = response.get_json()["error"]
    assert error["code"] == "bad_arguments"
    assert "fmt" in error["message"]


# -- the data layer --------------------------------------------------------------------------


def test_the_data_layer_does_not_import_flask() -> None:
    source = Path(data.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
    assert not {name for name in imported if name.split(".")[0] in ("flask", "werkzeug")}


def test_filters_parse_and_query() -> None:
    filters = data.Filters.parse({"state": "failed", "name": " reports.build ", "limit": "50"})
    assert filters == data.Filters(TaskState.FAILED, "reports.build", 50, None)
    assert filters.query(cursor="c1") == {
        "state": "failed",
        "name": "reports.build",
        "limit": "50",
        "cursor": "c1",
    }
    assert data.Filters.parse({}).query() == {}
    assert data.Filters.parse({"state": "", "name": ""}) == data.Filters()
    with pytest.raises(data.BadQuery, match="Unknown state"):
        data.Filters.parse({"state": "sleeping"})


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.123, "0.12 s"),
        (12.34, "12.3 s"),
        (245, "4 min 5 s"),
        (7380, "2 h 3 min"),
        (200_000, "2 d 7 h"),
    ],
)
def test_durations(seconds: float, text: str) -> None:
    import datetime

    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    assert data.duration(start, start + datetime.timedelta(seconds=seconds)) == text
    assert data.duration(None, start) == ""
