from __future__ import annotations

import sys
import textwrap
from typing import Any

import celery
import pytest
from celery import _state as celery_state
from celery import shared_task
from flask import Flask, current_app, g, has_app_context

from conftest import AppFactory, require_redis
from flask_tasks import FlaskCelery, Task, TaskResult, Tasks
from flask_tasks.testing import start_worker

tasks = Tasks()


@tasks.task
def add(a: int, b: int) -> int:
    return a + b


@tasks.task
def config_value(key: str) -> Any:
    return current_app.config[key]


@tasks.task(
    queue="mail",
    max_retries=7,
    time_limit=30,
    soft_time_limit=20,
    rate_limit="10/s",
    ignore_result=True,
    acks_late=True,
    name="custom.name",
)
def with_options() -> None:
    pass


@tasks.task(bind=True)
def bound(self: Any, x: int) -> list[Any]:
    return [self.name, self.request.id, x]


@shared_task
def shared_app_name() -> str:
    return str(current_app.name)


flaky_calls: list[int] = []


@tasks.task(retry_for=(ConnectionError,), retry_backoff=False, default_retry_delay=0)
def flaky(fail_times: int) -> int:
    flaky_calls.append(1)
    if len(flaky_calls) <= fail_times:
        raise ConnectionError("try again")
    return len(flaky_calls)


def test_init_app_stores_one_celery_app_per_flask_app(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    state = app.extensions["tasks"]
    assert isinstance(state.celery, FlaskCelery)
    assert app.extensions["celery"] is state.celery
    assert state.extension is tasks
    assert state.celery.flask_app is app
    assert celery_state.default_app is state.celery
    assert celery.current_app._get_current_object() is state.celery
    with app.app_context():
        assert tasks.celery is state.celery


def test_constructor_with_app(make_app: AppFactory) -> None:
    app = make_app()
    ext = Tasks(app)
    assert app.extensions["tasks"].extension is ext


def test_init_app_twice_is_a_clear_error(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    with pytest.raises(RuntimeError, match="already registered on this Flask app"):
        tasks.init_app(app)
    with pytest.raises(RuntimeError, match="already registered"):
        Tasks().init_app(app)


def test_the_extension_does_not_keep_the_app(make_app: AppFactory) -> None:
    app = make_app()
    ext = Tasks(app)
    assert all(value is not app for value in vars(ext).values())


def test_tasks_declared_before_the_app_are_bound(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    registered = app.extensions["celery"].tasks
    for task in (add, config_value, with_options, bound, flaky):
        assert task.name in registered
    assert isinstance(add, Task)
    assert add.name == "test_extension.add"


def test_a_task_module_imported_after_init_app_binds_too(
    make_app: AppFactory, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(CELERY_TASK_ALWAYS_EAGER=True)
    ext = Tasks(app)
    (tmp_path / "late_tasks.py").write_text(
        textwrap.dedent(
            """
            def make(ext):
                @ext.task
                def late(x: int) -> int:
                    return x * 2
                return late
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import late_tasks

    late = late_tasks.make(ext)
    assert late.name in app.extensions["celery"].tasks
    with app.app_context():
        assert late.delay(21).get() == 42
    sys.modules.pop("late_tasks", None)


def test_celery_task_options_pass_through(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    task = app.extensions["celery"].tasks["custom.name"]
    assert task.default_routing == {"queue": "mail"}
    assert task.max_retries == 7
    assert (task.time_limit, task.soft_time_limit) == (30, 20)
    assert task.rate_limit == "10/s"
    assert task.ignore_result is True
    assert task.acks_late is True


def test_retry_for_is_autoretry_with_backoff(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    task = app.extensions["celery"].tasks[flaky.name]
    assert task.autoretry_for == (ConnectionError,)
    assert task.retry_jitter is True
    assert task.retry_backoff_max == 600
    flaky_calls.clear()
    with start_worker(app), app.app_context():
        assert flaky.delay(2).get(timeout=20, interval=0.01) == 3


def test_retry_for_and_autoretry_for_together_is_an_error() -> None:
    with pytest.raises(TypeError, match="either retry_for or autoretry_for"):

        @Tasks().task(retry_for=(OSError,), autoretry_for=(OSError,))
        def nope() -> None:
            pass


def test_two_functions_under_one_name_raise_naming_both() -> None:
    ext = Tasks()

    @ext.task(name="dup")
    def first() -> None:
        pass

    with pytest.raises(ValueError, match="dup") as info:

        @ext.task(name="dup")
        def second() -> None:
            pass

    message = str(info.value)
    assert "first" in message
    assert "second" in message
    assert "test_extension.py" in message


def test_a_name_taken_on_the_celery_app_raises_at_binding(make_app: AppFactory) -> None:
    app = make_app()
    ext = Tasks(app)

    def theirs() -> None:
        pass

    app.extensions["celery"].task(name="taken", shared=False, lazy=False)(theirs)
    with pytest.raises(ValueError, match=r"'taken' is already registered.*theirs"):

        @ext.task(name="taken")
        def mine() -> None:
            pass


def test_redeclaring_the_same_function_is_not_a_duplicate(make_app: AppFactory) -> None:
    ext = Tasks(make_app())

    def job() -> None:
        pass

    ext.task(job)
    ext.task(job)


def test_delay_returns_a_typed_handle_in_eager_mode(make_app: AppFactory) -> None:
    app = make_app(CELERY={"task_always_eager": True})
    tasks.init_app(app)
    with app.app_context():
        handle = add.delay(2, 3)
        assert isinstance(handle, TaskResult)
        assert handle.get() == 5
        assert add(2, 3) == 5
        assert add.apply_async((4, 5)).get() == 9
        name, task_id, x = bound.delay(7).get()
        assert (name, x) == (bound.name, 7)
        assert task_id == bound.delay(7).id or task_id


def test_calls_without_an_app(make_app: AppFactory) -> None:
    ext = Tasks()

    @ext.task
    def lonely() -> int:
        return 1

    with pytest.raises(RuntimeError, match="Did you forget to call 'init_app'"):
        lonely.delay()
    other = make_app()
    with other.app_context(), pytest.raises(RuntimeError, match="not registered with this"):
        lonely.delay()


def test_outside_an_app_context_the_only_app_is_used(make_app: AppFactory) -> None:
    ext = Tasks()

    @ext.task
    def double(x: int) -> int:
        return 2 * x

    app = make_app(CELERY_TASK_ALWAYS_EAGER=True)
    ext.init_app(app)
    assert not has_app_context()
    assert double.delay(4).get() == 8


def test_two_apps_with_different_brokers(make_app: AppFactory) -> None:
    require_redis()
    first = make_app(NAME="embedded app")
    second = make_app("redis", NAME="redis app")
    tasks.init_app(first)
    tasks.init_app(second)
    assert first.extensions["celery"].conf.broker_url.startswith("tasksdb+sqlite")
    assert second.extensions["celery"].conf.broker_url.startswith("redis://")
    with start_worker(first), start_worker(second):
        for app in (first, second):
            with app.app_context():
                assert (
                    config_value.delay("NAME").get(timeout=10, interval=0.01)
                    == (app.config["NAME"])
                )


def test_shared_task_runs_in_the_app_context(make_app: AppFactory) -> None:
    app = make_app()
    tasks.init_app(app)
    assert shared_app_name.apply().get() == app.name
    with start_worker(app):
        assert shared_app_name.delay().get(timeout=10, interval=0.01) == app.name


def test_official_pattern_code_keeps_working(make_app: AppFactory) -> None:
    """Seed 001: current_app.extensions["celery"] and celery.result.AsyncResult(id)."""
    from celery.result import AsyncResult

    app = make_app()
    tasks.init_app(app)
    with start_worker(app), app.app_context():
        celery_app = current_app.extensions["celery"]
        result = celery_app.tasks[add.name].delay(20, 22)
        assert AsyncResult(result.id).get(timeout=10, interval=0.01) == 42


def test_app_context_passes_through_in_eager_mode(make_app: AppFactory) -> None:
    """An eager task sees the caller's context (and so its SQLAlchemy session)."""
    app = make_app(CELERY_TASK_ALWAYS_EAGER=True)
    ext = Tasks(app)

    @ext.task
    def read_g() -> Any:
        return g.get("marker")

    with app.test_request_context():
        g.marker = "caller"
        assert read_g.delay().get() == "caller"
        assert read_g() == "caller"
    with app.app_context():
        assert read_g.delay().get() is None


def test_a_worker_gives_each_task_a_fresh_context(make_app: AppFactory) -> None:
    app = make_app()
    ext = Tasks(app)

    @ext.task
    def count_in_g() -> int:
        g.count = g.get("count", 0) + 1
        return int(g.count)

    for pool in ("threads", "solo"):
        with start_worker(app, pool=pool), app.app_context():
            results = [count_in_g.delay() for _ in range(5)]
            assert [r.get(timeout=10, interval=0.01) for r in results] == [1] * 5


def test_flask_app_name_is_the_celery_main(tmp_path: Any) -> None:
    app = Flask("myproject.web", instance_path=str(tmp_path))
    Tasks(app)
    assert app.extensions["celery"].main == "myproject.web"
