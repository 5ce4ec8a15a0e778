"""The pytest plugin, as a user sees it: small test suites run by pytester against a tiny
app, on the embedded default (and Redis), plus the helpers of flask_tasks.testing used
directly."""

from __future__ import annotations

import textwrap
import uuid
from importlib.metadata import entry_points
from typing import Any

import pytest
from kombu import Queue

from apps.brokers import REDIS_URL
from conftest import AppFactory, require_redis
from flask_tasks import Tasks, TaskState
from flask_tasks.testing import EagerTasks, TasksWorker, app_queues, start_worker

pytest_plugins = ["pytester"]

PLUGIN = "flask_tasks.pytest_plugin"


def _registered() -> bool:
    return any(ep.value == PLUGIN for ep in entry_points(group="pytest11"))


# A stale editable install (made before the entry point existed) does not load the plugin
# by itself; test_the_entry_point_registers_the_plugin says so, the others still run.
PLUGIN_ARGS = [] if _registered() else ["-p", PLUGIN]

USER_APP = """
from flask import Flask, g
from flask_tasks import Tasks, progress

tasks = Tasks()


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
def divide(a: int, b: int) -> float:
    return a / b


@tasks.task
def pair(a: int, b: int) -> tuple[int, int]:
    return (a, b)


@tasks.task
def count(n: int) -> int:
    for i in range(n):
        progress(i + 1, n, message=f"item {i + 1}")
    return n


@tasks.task(queue="mail")
def send_mail(to: str) -> str:
    return f"sent to {to}"


@tasks.task
def read_g() -> object:
    return g.get("marker")


def create_app(instance_path, **config) -> Flask:
    app = Flask(__name__, instance_path=str(instance_path))
    app.config.update(TESTING=True, **config)
    tasks.init_app(app)
    return app
"""

USER_CONFTEST = """
import pytest
from userapp import create_app


@pytest.fixture
def app(tmp_path):
    return create_app(tmp_path / "instance")
"""

# Strict, as a careful user's suite would be: an unclosed resource or a stray warning from
# the plugin would fail it.
USER_INI = """
[pytest]
addopts = --strict-markers
filterwarnings = error
"""


@pytest.fixture
def user_project(pytester: pytest.Pytester) -> pytest.Pytester:
    """A user's project: userapp.py, a conftest.py with an ``app`` fixture, a strict ini."""
    pytester.makeini(USER_INI)
    pytester.makepyfile(userapp=USER_APP)
    pytester.makeconftest(USER_CONFTEST)
    return pytester


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    pytester.makepyfile(test_user=textwrap.dedent(source))
    return pytester.runpytest(*PLUGIN_ARGS, "-p", "no:cacheprovider", *args)


def test_the_entry_point_registers_the_plugin() -> None:
    assert _registered(), (
        "No pytest11 entry point names flask_tasks.pytest_plugin: reinstall the package "
        "('pip install -e .') so its entry points are registered."
    )


# -- the worker ---------------------------------------------------------------------------


def test_a_worker_runs_the_tasks_of_the_users_app(user_project: pytest.Pytester) -> None:
    result = run(
        user_project,
        """
        import pytest
        from flask_tasks import TaskState
        from userapp import add, count, divide, pair, send_mail


        def test_succeeded(app, tasks_worker):
            with app.app_context():
                handle = add.delay(2, 3)
            record = tasks_worker.assert_succeeded(handle, result=5)
            assert record.state is TaskState.SUCCEEDED
            assert tasks_worker.wait(handle.id).result == 5


        def test_failed(app, tasks_worker):
            with app.app_context():
                handle = divide.delay(1, 0)
            record = tasks_worker.assert_failed(handle, ZeroDivisionError, match="by zero")
            assert record.error.type == "ZeroDivisionError"
            tasks_worker.assert_failed(handle, "ZeroDivisionError")


        def test_results_compare_as_json(app, tasks_worker):
            with app.app_context():
                handle = pair.delay(1, 2)
            tasks_worker.assert_succeeded(handle, result=(1, 2))
            tasks_worker.assert_succeeded(handle, result=[1, 2])


        def test_progress_is_recorded(app, tasks_worker):
            with app.app_context():
                handle = count.delay(50)
            record = tasks_worker.assert_succeeded(handle, result=50)
            assert record.progress.percent == 100


        def test_every_queue_of_the_app_is_consumed(app, tasks_worker):
            assert "mail" in tasks_worker.queues
            with app.app_context():
                handle = send_mail.delay("ada@example.com")
            tasks_worker.assert_succeeded(handle, result="sent to ada@example.com")


        @pytest.mark.parametrize("tasks_worker_options", [{"pool": "solo"}])
        def test_options_can_be_overridden(app, tasks_worker):
            assert tasks_worker.pool == "solo"
            with app.app_context():
                handle = add.delay(1, 1)
            tasks_worker.assert_succeeded(handle, result=2)


        def test_no_worker_thread_outlives_its_test():
            import threading

            # The worker's own thread and its pool's (transport threads end on their own).
            prefixes = ("flask-tasks-test", "flask-tasks-worker")
            assert not [t for t in threading.enumerate() if t.name.startswith(prefixes)]
        """,
    )
    result.assert_outcomes(passed=7)


def test_a_failing_helper_says_what_happened(user_project: pytest.Pytester) -> None:
    result = run(
        user_project,
        """
        from userapp import add, divide


        def test_expected_success(app, tasks_worker):
            with app.app_context():
                handle = divide.delay(1, 0)
            tasks_worker.assert_succeeded(handle)


        def test_expected_result(app, tasks_worker):
            with app.app_context():
                handle = add.delay(2, 3)
            tasks_worker.assert_succeeded(handle, result=6)


        def test_expected_error(app, tasks_worker):
            with app.app_context():
                handle = divide.delay(1, 0)
            tasks_worker.assert_failed(handle, KeyError)


        def test_expected_failure(app, tasks_worker):
            with app.app_context():
                handle = add.delay(2, 3)
            tasks_worker.assert_failed(handle, ValueError)


        def test_expected_message(app, tasks_worker):
            with app.app_context():
                handle = divide.delay(1, 0)
            tasks_worker.assert_failed(handle, match="negative")


        def test_waits_on_a_queue_nobody_consumes(app, tasks_worker):
            with app.app_context():
                handle = add.apply_async((1, 2), queue="reports")
            tasks_worker.wait(handle, timeout=0.3)


        def test_waits_for_an_unknown_task(app, tasks_worker):
            tasks_worker.wait("no-such-task", timeout=0.05)
        """,
    )
    result.assert_outcomes(failed=7)
    lines = result.stdout.lines
    first = next(line for line in lines if "expected it to succeed" in line)
    assert first.startswith("E       AssertionError: Task 'userapp.divide' [")
    assert first.endswith(
        "] failed with ZeroDivisionError: division by zero; expected it to succeed."
    )
    result.stdout.fnmatch_lines(
        [
            "E*Traceback (most recent call last):",
            "E*return a / b",
            "E*ZeroDivisionError: division by zero",
            "test_user.py:7: AssertionError",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "E*AssertionError: Task 'userapp.add' [[]*[]] succeeded with result 5; expected 6.",
            "E*AssertionError: Task 'userapp.divide' [[]*[]] failed with ZeroDivisionError: "
            "division by zero; expected KeyError.",
            "E*AssertionError: Task 'userapp.add' [[]*[]] succeeded with result 5; expected "
            "it to fail with ValueError.",
            "E*AssertionError: Task 'userapp.divide' [[]*[]] failed with ZeroDivisionError: "
            "division by zero; the message does not match 'negative'.",
            "E*TimeoutError: Task 'userapp.add' [[]*[]] did not finish within 0.3s: its "
            "record is still 'queued'. It waits in queue 'reports', which this worker does not "
            "consume (it consumes 'celery', 'mail'): add it to the worker's queues (the "
            "tasks_worker_options fixture, or queues=[[]...[]]).",
            "E*TimeoutError: Task [[]no-such-task[]] has no record in the store of app "
            "'userapp' after 0.05s. *",
        ],
        consecutive=False,
    )
    # The helpers hide their own frames: each failure points at the user's test.
    assert "flask_tasks/testing.py" not in result.stdout.str()


def test_a_missing_or_wrong_app_is_reported_with_its_fix(pytester: pytest.Pytester) -> None:
    pytester.makeini(USER_INI)
    pytester.makepyfile(userapp=USER_APP)
    result = run(
        pytester,
        """
        import pytest
        from flask import Flask
        from userapp import create_app


        def test_no_app_fixture(tasks_worker):
            pass


        @pytest.fixture
        def plain_app(tmp_path):
            return Flask("plain", instance_path=str(tmp_path))


        @pytest.fixture
        def eager_app(tmp_path):
            return create_app(tmp_path, CELERY_TASK_ALWAYS_EAGER=True)


        @pytest.fixture
        def good_app(tmp_path):
            return create_app(tmp_path)


        class TestWithoutFlaskTasks:
            @pytest.fixture
            def app(self, plain_app):
                return plain_app

            def test_worker(self, tasks_worker):
                pass


        class TestEagerApp:
            @pytest.fixture
            def app(self, eager_app):
                return eager_app

            def test_worker(self, tasks_worker):
                pass


        class TestBoth:
            @pytest.fixture
            def app(self, good_app):
                return good_app

            def test_worker_and_eager(self, tasks_worker, tasks_eager):
                pass
        """,
    )
    result.assert_outcomes(errors=4)
    result.stdout.fnmatch_lines(
        [
            "*The flask-tasks fixtures need an 'app' fixture that returns your Flask app*",
            "*def app(tmp_path):*",
            '*return create_app({"TESTING": True}, instance_path=tmp_path / "instance")',
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*The 'app' fixture: The Flask app 'plain' does not use flask-tasks. Did you forget "
            "to call 'tasks.init_app(app)' in the app factory?",
            "*runs its tasks eagerly (task_always_eager is set)*use eager mode (the "
            "tasks_eager fixture) instead of a worker.",
            "*A test cannot use both 'tasks_worker' and 'tasks_eager'*",
        ],
        consecutive=False,
    )


# -- eager mode ---------------------------------------------------------------------------


def test_eager_mode_writes_records_and_restores_the_app(user_project: pytest.Pytester) -> None:
    result = run(
        user_project,
        """
        import pytest
        from flask import g
        from flask_tasks import TaskState
        from userapp import add, create_app, divide, read_g


        @pytest.fixture(scope="module")
        def app(tmp_path_factory):
            return create_app(tmp_path_factory.mktemp("instance"))


        def test_records_are_written(app, tasks_eager):
            with app.app_context():
                handle = add.delay(2, 3)
            assert handle.get() == 5
            record = tasks_eager.assert_succeeded(handle, result=5)
            assert record.attempt == 1 and record.started_at is not None


        def test_the_callers_app_context_is_used(app, tasks_eager):
            with app.test_request_context():
                g.marker = "from the test"
                handle = read_g.delay()
            tasks_eager.assert_succeeded(handle, result="from the test")


        def test_exceptions_propagate_and_are_recorded(app, tasks_eager):
            with app.app_context(), pytest.raises(ZeroDivisionError):
                divide.delay(1, 0)
            page = tasks_eager.store.list(name="userapp.divide", state=TaskState.FAILED)
            assert len(page.records) == 1
            tasks_eager.assert_failed(page.records[0].id, ZeroDivisionError)


        def test_propagation_can_be_turned_off(app, tasks_eager):
            tasks_eager.propagate = False
            with app.app_context():
                handle = divide.delay(1, 0)
            assert handle.failed()
            tasks_eager.assert_failed(handle, ZeroDivisionError, match="division by zero")
            with app.app_context(), pytest.raises(ZeroDivisionError):
                divide.apply_async((1, 0)).get()


        def test_the_app_is_back_to_normal_after_its_tests(app):
            conf = app.extensions["celery"].conf
            assert conf.task_always_eager is False
            assert "task_always_eager" not in conf.changes
            assert "task_eager_propagates" not in conf.changes
            assert "apply_async" not in vars(app.extensions["celery"].tasks[add.name])
        """,
    )
    result.assert_outcomes(passed=5)


SQLALCHEMY_APP = """
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column
from flask_tasks import Tasks

db = SQLAlchemy()
tasks = Tasks()


class Item(db.Model):
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


@tasks.task
def count_items(name: str) -> int:
    return db.session.query(Item).filter_by(name=name).count()


def create_app(instance_path) -> Flask:
    app = Flask(__name__, instance_path=str(instance_path))
    instance_path.mkdir(parents=True, exist_ok=True)
    app.config.update(
        TESTING=True, SQLALCHEMY_DATABASE_URI=f"sqlite:///{instance_path / 'app.db'}"
    )
    db.init_app(app)
    tasks.init_app(app)
    with app.app_context():
        db.create_all()
    return app
"""


def test_an_eager_task_shares_the_tests_sqlalchemy_session(pytester: pytest.Pytester) -> None:
    pytester.makeini(USER_INI)
    pytester.makepyfile(sqlapp=SQLALCHEMY_APP)
    result = run(
        pytester,
        """
        import pytest
        from sqlapp import Item, count_items, create_app, db


        @pytest.fixture
        def app(tmp_path):
            app = create_app(tmp_path / "instance")
            yield app
            with app.app_context():
                db.engine.dispose()


        def test_an_uncommitted_object_is_visible_to_the_task(app, tasks_eager):
            with app.app_context():
                db.session.add(Item(name="draft"))      # never committed
                handle = count_items.delay("draft")
                assert handle.get() == 1
                db.session.rollback()
            tasks_eager.assert_succeeded(handle, result=1)
        """,
    )
    result.assert_outcomes(passed=1)


# -- Redis, memory://, and sessions that use none of it ----------------------------------


def test_a_worker_on_redis(user_project: pytest.Pytester) -> None:
    require_redis()
    queue = f"test-{uuid.uuid4().hex[:12]}"
    prefix = "t_" + queue.replace("-", "_")[-12:]
    user_project.makeconftest(
        f"""
        import pytest
        from userapp import create_app


        @pytest.fixture
        def app(tmp_path):
            app = create_app(
                tmp_path / "instance",
                TASKS_BROKER_URL={REDIS_URL!r},
                TASKS_RESULT_BACKEND={REDIS_URL!r},
                TASKS_STORE_PREFIX={prefix!r},
                TASKS_CELERY={{"task_default_queue": {queue!r}}},
            )
            yield app
            app.extensions["tasks"].store.drop()
            app.extensions["tasks"].store.close()
            app.extensions["celery"].close()
        """
    )
    result = run(
        user_project,
        """
        from userapp import add, divide


        def test_on_redis(app, tasks_worker):
            assert app.extensions["celery"].conf.broker_url.startswith("redis://")
            with app.app_context():
                ok, bad = add.delay(2, 3), divide.delay(1, 0)
            tasks_worker.assert_succeeded(ok, result=5)
            tasks_worker.assert_failed(bad, ZeroDivisionError)
        """,
    )
    result.assert_outcomes(passed=1)


def test_a_worker_polls_memory_brokers_fast(user_project: pytest.Pytester) -> None:
    result = run(
        user_project,
        """
        import time
        import pytest
        from userapp import add, create_app


        @pytest.fixture
        def app(tmp_path):
            return create_app(tmp_path / "instance", TASKS_BROKER_URL="memory://")


        def test_round_trips(app, tasks_worker):
            started = time.monotonic()
            for i in range(5):
                with app.app_context():
                    handle = add.delay(i, i)
                tasks_worker.assert_succeeded(handle, result=2 * i)
            # The memory transport sleeps 1 s after an empty poll unless told otherwise.
            assert time.monotonic() - started < 2.5
        """,
    )
    result.assert_outcomes(passed=1)


def test_a_session_without_the_fixtures_is_unaffected(user_project: pytest.Pytester) -> None:
    user_project.makepyfile(
        test_user="""
        import sys
        import threading

        import pytest
        from userapp import create_app

        CONF = {}


        @pytest.fixture(scope="module")
        def app(tmp_path_factory):
            return create_app(tmp_path_factory.mktemp("instance"))


        def test_the_plugin_is_loaded_and_idle(request, app):
            assert request.config.pluginmanager.has_plugin("flask_tasks")
            assert "flask_tasks.pytest_plugin" in sys.modules
            assert "flask_tasks.testing" not in sys.modules
            assert not [name for name in request.fixturenames if name.startswith("tasks_")]
            conf = app.extensions["celery"].conf
            CONF.update(changes=dict(conf.changes), eager=conf.task_always_eager)
            assert CONF["eager"] is False


        def test_nothing_was_started_or_changed(app):
            assert not [t for t in threading.enumerate() if t.name.startswith("flask-tasks")]
            assert dict(app.extensions["celery"].conf.changes) == CONF["changes"]
            assert "flask_tasks.testing" not in sys.modules
        """
    )
    result = user_project.runpytest_subprocess(*PLUGIN_ARGS, "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)


# -- flask_tasks.testing without pytest's fixtures ----------------------------------------


helpers = Tasks()


@helpers.task
def double(x: int) -> int:
    return 2 * x


@helpers.task(queue="mail")
def mail() -> None:
    pass


def test_app_queues_lists_every_queue_the_tasks_go_to(make_app: AppFactory) -> None:
    app = make_app(
        TASKS_CELERY={
            "task_queues": (Queue("declared"),),
            "task_routes": {"some.task": {"queue": "routed"}, "other.task": "named"},
        }
    )
    helpers.init_app(app)
    queues = app_queues(app.extensions["celery"])
    assert queues == ["celery", "declared", "mail", "routed", "named"]


def test_the_helpers_work_as_context_managers(make_app: AppFactory) -> None:
    app = make_app()
    helpers.init_app(app)
    conf = app.extensions["celery"].conf
    before = dict(conf.changes)
    with EagerTasks(app) as eager:
        assert conf.task_always_eager is True
        with pytest.raises(RuntimeError, match="in eager mode already"):
            EagerTasks(app).start()
        with app.app_context():
            eager.assert_succeeded(double.delay(4), result=8)
        with pytest.raises(RuntimeError, match="runs its tasks eagerly"):
            TasksWorker(app)
    assert dict(conf.changes) == before
    with TasksWorker(app, pool="solo") as worker:
        with app.app_context():
            handle = double.delay(5)
        record = worker.wait(handle)
        assert (record.state, record.result) == (TaskState.SUCCEEDED, 10)
        assert worker.record(handle) == record
    assert worker.wait(handle) == record  # finished: no worker needed
    with app.app_context():
        handle = double.delay(6)
    with pytest.raises(RuntimeError, match="has stopped"):
        worker.wait(handle)
    with pytest.raises(TypeError, match="a task id or the handle"):
        worker.record(42)  # type: ignore[arg-type]


def test_start_worker_still_yields_the_work_controller(make_app: AppFactory) -> None:
    app = make_app()
    helpers.init_app(app)
    with start_worker(app) as controller, app.app_context():
        assert controller.pool is not None
        assert double.delay(1).get(timeout=10, interval=0.01) == 2


def test_a_helper_needs_an_app_with_flask_tasks(tmp_path: Any) -> None:
    from flask import Flask

    with pytest.raises(RuntimeError, match=r"Did you forget to call 'tasks\.init_app"):
        EagerTasks(Flask("bare", instance_path=str(tmp_path)))
    with pytest.raises(RuntimeError, match="not the factory"):
        TasksWorker(lambda: None)  # type: ignore[arg-type]
