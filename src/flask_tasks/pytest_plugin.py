"""The flask-tasks pytest plugin: fixtures to run your app's tasks in your tests.

Installing flask-tasks registers it (entry point ``pytest11``, name ``flask_tasks``;
``-p no:flask_tasks`` turns it off). It is opt-in: nothing runs, starts or changes
unless a test requests one of its fixtures, and loading it imports nothing beyond pytest.

* ``tasks_app``: the Flask app the other fixtures work on; by default your own ``app``
  fixture. Override it to use another one.
* ``tasks_worker``: a real Celery worker for that app in a thread of the test process
  (:class:`flask_tasks.testing.TasksWorker`), on the app's own broker.
* ``tasks_worker_options``: keyword arguments for that worker (``pool``, ``concurrency``,
  ``queues``, ...); ``{}`` unless you override it.
* ``tasks_eager``: eager mode for the test (:class:`flask_tasks.testing.EagerTasks`):
  tasks run inline, in the caller's app context, and still get their records.

See ``docs/testing.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flask import Flask

    from .testing import EagerTasks, TasksWorker

NO_APP_FIXTURE = """\
The flask-tasks fixtures need an 'app' fixture that returns your Flask app, with \
flask-tasks initialised. Add one to conftest.py, for example:

    @pytest.fixture
    def app(tmp_path):
        # a fresh instance folder per test: an empty embedded broker and record store
        return create_app({"TESTING": True}, instance_path=tmp_path / "instance")

or override the 'tasks_app' fixture to return the app of another fixture (see \
"Testing your tasks", docs/testing.md in the flask-tasks documentation)."""


@pytest.fixture
def tasks_app(request: pytest.FixtureRequest) -> Flask:
    """The Flask app the flask-tasks fixtures work on: the one your ``app`` fixture returns.

    Override this fixture when your app fixture has another name.
    """
    from .testing import tasks_state

    try:
        app: Flask = request.getfixturevalue("app")
    except pytest.FixtureLookupError as exc:
        if exc.argname != "app":
            raise
        pytest.fail(NO_APP_FIXTURE, pytrace=False)
    try:
        tasks_state(app)
    except RuntimeError as exc:
        pytest.fail(f"The 'app' fixture: {exc}", pytrace=False)
    return app


@pytest.fixture
def tasks_worker_options() -> dict[str, Any]:
    """Keyword arguments for the ``tasks_worker`` fixture's :class:`TasksWorker`.

    ``{}`` (a pool of 2 threads, consuming every queue the app's tasks go to). Override
    it in a ``conftest.py``, or parametrize a test with it, for e.g.
    ``{"pool": "solo"}`` or ``{"queues": ["mail"]}``.
    """
    return {}


@pytest.fixture
def tasks_worker(
    request: pytest.FixtureRequest, tasks_app: Flask, tasks_worker_options: dict[str, Any]
) -> Iterator[TasksWorker]:
    """A real Celery worker for the app, in a thread of this process, for one test.

    It consumes from the app's own broker (the embedded SQLite file in the instance
    folder, ``memory://``, Redis, RabbitMQ), is ready when the test starts, and stops
    when it ends. Wait for tasks and check how they ended with its helpers::

        def test_report(app, tasks_worker):
            with app.app_context():
                handle = build_report.delay(42)
            tasks_worker.assert_succeeded(handle, result={"rows": 42})
    """
    from .testing import TasksWorker

    if "tasks_eager" in request.fixturenames:
        pytest.fail(
            "A test cannot use both 'tasks_worker' and 'tasks_eager': eager tasks never "
            "reach the worker. Pick one.",
            pytrace=False,
        )
    try:
        worker = TasksWorker(tasks_app, **tasks_worker_options)
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    with worker:
        yield worker


@pytest.fixture
def tasks_eager(tasks_app: Flask) -> Iterator[EagerTasks]:
    """Eager mode for one test: ``delay()`` runs the task at once, records and all.

    The task runs in the caller's app context (and so its Flask-SQLAlchemy session), its
    record is written, and its exception is raised by ``delay()`` after the failure was
    recorded; set ``tasks_eager.propagate = False`` to get a failed handle instead. The
    app's Celery settings are put back after the test.
    """
    from .testing import EagerTasks

    with EagerTasks(tasks_app) as eager:
        yield eager
