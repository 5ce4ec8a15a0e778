"""Periodic tasks: @tasks.periodic, TASKS_SCHEDULE, beat in real processes, the one-beat lock."""

from __future__ import annotations

import datetime
import itertools
import os
import signal
import socket
import sys
import textwrap
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery.schedules import crontab
from flask import Flask

from apps.brokers import REDIS_URL, broker_config
from conftest import AppFactory, require_redis
from flask_tasks import ConfigError, Task, Tasks
from flask_tasks.periodic import (
    SCHEDULER,
    BeatLock,
    BeatScheduler,
    EmbeddedBeat,
    _FileLock,
    _RedisLease,
)
from flask_tasks.testing import start_worker
from workers import Process, flask, subprocess_env

EVERY = 0.5  # seconds between two runs of the periodic tasks below
ONE_SENDER_GAP = 0.4  # two beats at 0.5 s interleave with a gap of at most 0.25 s

# -- declaring ----------------------------------------------------------------------------


def test_decorator_forms_above_a_task_and_on_a_plain_function(make_app: AppFactory) -> None:
    tasks = Tasks()

    @tasks.periodic(crontab(minute="*/15"))
    @tasks.task
    def report() -> str:
        return "report"

    @tasks.periodic(datetime.timedelta(seconds=30), args=(7,), queue="periodic", expires=20)
    def cleanup(days: int) -> int:
        return days

    @tasks.periodic(45, kwargs={"days": 1}, name="cleanup-daily")
    @tasks.periodic("0 4 * * *", args=[30], name="cleanup-monthly")
    @tasks.task(name="custom.purge")
    def purge(days: int) -> int:
        return days

    assert isinstance(report, Task) and isinstance(cleanup, Task)
    assert cleanup.name == "test_periodic.cleanup"
    assert cleanup.__wrapped__.__name__ == "cleanup"
    app = make_app(CELERY_TASK_ALWAYS_EAGER=True)
    tasks.init_app(app)
    with app.app_context():
        assert cleanup.delay(3).get() == 3  # still an ordinary task
    schedule = app.extensions["celery"].conf.beat_schedule
    assert set(schedule) == {report.name, cleanup.name, "cleanup-daily", "cleanup-monthly"}
    assert schedule[report.name]["schedule"] == crontab(minute="*/15")
    assert schedule[cleanup.name] == {
        "task": cleanup.name,
        "schedule": datetime.timedelta(seconds=30),
        "args": (7,),
        "kwargs": {},
        "options": {"queue": "periodic", "expires": 20},
    }
    assert schedule["cleanup-daily"]["task"] == "custom.purge"
    assert schedule["cleanup-daily"]["kwargs"] == {"days": 1}
    assert schedule["cleanup-monthly"]["schedule"] == crontab(minute="0", hour="4")
    assert app.extensions["celery"].conf.beat_scheduler == SCHEDULER


def test_entries_reach_every_app_before_and_after_init_app(make_app: AppFactory) -> None:
    tasks = Tasks()

    @tasks.periodic(10)
    @tasks.task
    def early() -> None: ...

    first, second = make_app(), make_app()
    tasks.init_app(first)
    tasks.init_app(second)

    @tasks.periodic(20)
    def late() -> None: ...  # a module imported after init_app

    third = make_app()
    tasks.init_app(third)
    for app in (first, second, third):
        celery_app = app.extensions["celery"]
        assert set(celery_app.conf.beat_schedule) == {early.name, late.name}
        assert late.name in celery_app.tasks


def test_duplicate_names_raise_and_a_reimported_module_does_not() -> None:
    tasks = Tasks()

    @tasks.periodic(10)
    @tasks.task
    def job(n: int = 0) -> None: ...

    with pytest.raises(ValueError, match="Several schedules for one task need names of their"):
        tasks.periodic(20)(job)
    with pytest.raises(ValueError, match=r"named 'test_periodic.job' already exists.*another"):
        tasks.periodic(30, name=job.name)(tasks.task(name="other.job")(lambda: None))

    def again(n: int = 0) -> None: ...

    # The module imported a second time: a new function with the same module and name.
    again.__name__, again.__qualname__ = "job", job.__wrapped__.__qualname__
    assert tasks.periodic(99)(again).name == job.name
    assert len(tasks._periodic) == 1 and tasks._periodic[0].schedule == 99


def test_decorator_misuse_says_how_to_fix_it() -> None:
    tasks = Tasks()
    other = Tasks()

    def fn(n: int) -> None: ...

    with pytest.raises(TypeError, match=r"needs a schedule first: @tasks.periodic\(3600\)"):
        tasks.periodic(fn)
    for bad, error in [("soon", ValueError), (0, ValueError), (-5, ValueError)]:
        with pytest.raises(error, match=r"tasks.periodic: .*; pass 3600, timedelta"):
            tasks.periodic(bad)
    for bad in (True, None, [1]):
        with pytest.raises(TypeError, match="is not a schedule"):
            tasks.periodic(bad)
    with pytest.raises(ValueError, match="not a valid cron string"):
        tasks.periodic("99 * * * *")
    with pytest.raises(TypeError, match="args must be a list or tuple"):
        tasks.periodic(10, args="abc")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"missing a required argument: 'n'; pass the task's"):
        tasks.periodic(10)(fn)
    with pytest.raises(TypeError, match=r"too many positional arguments"):
        tasks.periodic(10, args=(1, 2))(fn)
    with pytest.raises(TypeError, match=r"args\[0\]: datetime is not JSON serializable"):
        tasks.periodic(10, args=(datetime.datetime.now(),))(fn)
    with pytest.raises(ValueError, match="another 'Tasks' instance"):
        tasks.periodic(10, args=(1,))(other.task(fn))
    with pytest.raises(TypeError, match="decorates a function or a task"):
        tasks.periodic(10)(42)

    @tasks.periodic(10, args=(5,))
    @tasks.task(bind=True)
    def bound(self: Any, n: int) -> None: ...  # the task itself is not an argument

    assert tasks._periodic[-1].args == (5,)


# -- TASKS_SCHEDULE -------------------------------------------------------------------------


def work(n: int, label: str = "") -> None:
    """Not a task: TASKS_SCHEDULE must not name it."""


def test_config_schedule_is_merged_and_explicit_config_wins(make_app: AppFactory) -> None:
    tasks = Tasks()

    @tasks.periodic(10)
    @tasks.task
    def hourly() -> None: ...

    @tasks.periodic(10)
    @tasks.task
    def nightly() -> None: ...

    @tasks.periodic(10)
    @tasks.task
    def weekly() -> None: ...

    @tasks.task
    def add(a: int, b: int) -> int:
        return a + b

    app = make_app(
        TASKS_SCHEDULE={
            "sum": {"task": add, "schedule": "*/5 * * * *", "args": [1, 2], "options": {}},
            hourly.name: {"task": hourly.name, "schedule": datetime.timedelta(hours=1)},
            nightly.name: None,  # turned off
            "elsewhere": {"task": "worker_only_module.job", "schedule": 60, "relative": True},
        },
        TASKS_CELERY={
            "beat_schedule": {
                weekly.name: {"task": weekly.name, "schedule": 604800},
                hourly.name: {"task": hourly.name, "schedule": 1},
            }
        },
    )
    tasks.init_app(app)
    schedule = app.extensions["celery"].conf.beat_schedule
    assert set(schedule) == {"sum", hourly.name, weekly.name, "elsewhere"}
    assert schedule["sum"] == {
        "task": add.name,
        "schedule": crontab(minute="*/5"),
        "args": (1, 2),
        "kwargs": {},
        "options": {},
    }
    assert schedule[hourly.name]["schedule"] == datetime.timedelta(hours=1)  # TASKS_SCHEDULE
    assert schedule[weekly.name]["schedule"] == 604800  # beat_schedule over the decorator
    assert schedule["elsewhere"]["relative"] is True

    @tasks.periodic(5, name="sum")
    def late() -> None: ...  # declared later: the configured entry of that name still wins

    assert app.extensions["celery"].conf.beat_schedule["sum"]["task"] == add.name


def test_an_own_beat_scheduler_is_kept(make_app: AppFactory) -> None:
    app = make_app(TASKS_CELERY={"beat_scheduler": "custom.schedulers:Mine"})
    Tasks(app)
    assert app.extensions["celery"].conf.beat_scheduler == "custom.schedulers:Mine"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (5, r"TASKS_SCHEDULE\['x'\] = 5 is not valid: expected a dict such as"),
        ({"task": "a.b", "schedule": 5, "shedule": 1}, "unknown key 'shedule'. Did you mean"),
        ({"schedule": 5}, r"has no 'task': add it, e.g. 'task': 'app.tasks.cleanup'"),
        ({"task": "a.b"}, r"has no 'schedule': add it, e.g. 'schedule': 3600"),
        ({"task": 5, "schedule": 5}, r"\['task'\] = 5 is not valid: expected a task name"),
        ({"task": "a.b", "schedule": "often"}, r"\['schedule'\] = 'often' is not valid"),
        ({"task": "a.b", "schedule": -1}, r"not a number of seconds greater than 0"),
        ({"task": "a.b", "schedule": 1, "args": 3}, r"\['args'\] = 3 is not valid"),
        ({"task": "a.b", "schedule": 1, "kwargs": [1]}, r"\['kwargs'\] = \[1\] is not valid"),
        ({"task": "a.b", "schedule": 1, "options": 2}, r"\['options'\] = 2 is not valid"),
        ({"task": "a.b", "schedule": 1, "relative": 1}, r"\['relative'\] = 1 is not valid"),
        ({"task": "a.b", "schedule": 1, "args": [{1}]}, r"args\[0\]: set is not JSON"),
        (
            {"task": "test_periodic.wrok", "schedule": 1},
            r"'test_periodic.wrok' is not a task of this app: module 'test_periodic' is "
            r"imported and it has no task 'wrok'. Did you mean 'test_periodic.double'",
        ),
        (
            {"task": "test_periodic.work", "schedule": 1, "args": [1]},
            r"'work' in it is a plain function: decorate it with @tasks.task",
        ),
        (
            {"task": "test_periodic.double", "schedule": 1},
            r"TASKS_SCHEDULE\['x'\]: test_periodic.double: double\(\) missing 1 required",
        ),
    ],
)
def test_config_schedule_errors_name_the_entry_and_the_fix(
    make_app: AppFactory, entry: Any, message: str
) -> None:
    tasks = Tasks()

    @tasks.task
    def double(n: int) -> int:
        return 2 * n

    app = make_app(TASKS_SCHEDULE={"x": entry})
    with pytest.raises(ConfigError, match=message):
        tasks.init_app(app)


# -- the lock -------------------------------------------------------------------------------


def test_the_file_lock_has_one_holder(tmp_path: Path) -> None:
    path = str(tmp_path / "instance" / "beat.lock")
    first, second = BeatLock(path, None, "first"), BeatLock(path, None, "second")
    try:
        assert first.hold() and first.hold()
        assert not second.hold()
        assert "(first), since" in second.holder()
        first.release()
        assert second.hold()
        assert not first.hold()
    finally:
        first.release()
        second.release()
    again = _FileLock(path)
    assert again.acquire("again")  # released for good
    again.release()


def test_a_lock_that_cannot_be_tried_says_why(tmp_path: Path) -> None:
    import redis

    (tmp_path / "not-a-folder").write_text("")
    unusable = BeatLock(str(tmp_path / "not-a-folder" / "beat.lock"), None, "x")
    assert not unusable.hold()
    assert (
        unusable.why_not().startswith("its lock file ") and "cannot be used" in unusable.why_not()
    )
    client = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    unreachable = BeatLock(str(tmp_path / "beat.lock"), _RedisLease(client, "k", 30), "x")
    try:
        assert not unreachable.hold()
        assert unreachable.why_not().startswith("the Redis lease k cannot be reached (")
    finally:
        unreachable.release()
        client.close()


@pytest.mark.redis
def test_the_redis_lease_has_one_holder_and_expires() -> None:
    require_redis()
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    key = f"t_{uuid.uuid4().hex[:12]}:beat:lock"
    try:
        first, second = _RedisLease(client, key, 0.6), _RedisLease(client, key, 0.6)
        assert first.hold("one") and not second.hold("two")
        assert second.holder() == "one"
        first.release()
        assert second.hold("two") and not first.hold("one")
        time.sleep(0.7)  # "two" never renewed: its lease expired
        assert first.hold("one")
        assert second.hold("two") is False
        first.release()
        assert client.get(key) is None
    finally:
        client.delete(key)
        client.close()


def test_a_beat_with_nothing_to_run_takes_no_lock(make_app: AppFactory, tmp_path: Path) -> None:
    app = make_app()
    Tasks(app)
    scheduler = BeatScheduler(
        app=app.extensions["celery"],
        schedule_filename=str(tmp_path / "instance" / "celerybeat-schedule"),
    )
    try:
        assert scheduler.tick() == scheduler.standby_interval
        assert scheduler.beat_lock is None and not scheduler.active
        assert not list((tmp_path / "instance").glob("celerybeat-schedule*"))
    finally:
        scheduler.close()


# -- beat and a worker, in this process ------------------------------------------------------


def runs_of(app: Flask, name: str) -> list[Any]:
    """The records of the runs of task ``name``, oldest first."""
    with app.app_context():
        page = app.extensions["tasks"].store.list(name=name, limit=1000)
    return sorted(page.records, key=lambda record: record.submitted_at)


def wait_for(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.05)


def assert_one_sender(times: list[float]) -> None:
    """Runs every 0.5 s from one beat never follow each other closer than 0.4 s."""
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert gaps and min(gaps) >= ONE_SENDER_GAP, gaps


def test_beat_and_worker_run_a_half_second_schedule(broker: str, make_app: AppFactory) -> None:
    tasks = Tasks()

    @tasks.periodic(EVERY, args=(2,))
    @tasks.task
    def double(n: int) -> int:
        return 2 * n

    app = make_app(broker)
    tasks.init_app(app)
    celery_app = app.extensions["celery"]
    with start_worker(app):
        beat = EmbeddedBeat(celery_app)
        beat.start()
        try:
            wait_for(lambda: len(runs_of(app, double.name)) >= 3, what="three runs")

            @tasks.periodic(EVERY, name="late")
            @tasks.task
            def late() -> str:  # a module imported after the beat started
                return "late"

            wait_for(lambda: len(runs_of(app, late.name)) >= 2, what="runs of a late entry")
        finally:
            assert beat.stop()
        wait_for(
            lambda: all(r.state.value == "succeeded" for r in runs_of(app, double.name)),
            what="every run finished",
        )
    records = runs_of(app, double.name)
    assert all(r.result == 4 and r.owner is None for r in records)
    assert_one_sender([r.submitted_at.timestamp() for r in records])
    listed = app.test_cli_runner().invoke(
        args=["tasks", "list", "--name", double.name, "--limit", "1000"]
    )
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("succeeded") == len(records)
    assert not beat.scheduler.active and beat.scheduler.beat_lock is not None
    assert not beat.scheduler.beat_lock.file.held  # released at stop


def test_a_task_beat_does_not_know_is_sent_by_name_and_recorded_by_the_worker(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    worker_tasks = Tasks()

    @worker_tasks.task(name="worker_only.ping")
    def ping() -> str:
        return "pong"

    web = make_app(
        TASKS_SCHEDULE={"ping": {"task": "worker_only.ping", "schedule": EVERY}},
    )
    Tasks(web)  # knows no such task: its module is imported by the workers only
    worker_app = make_app()  # same instance folder: same queue and records
    worker_tasks.init_app(worker_app)
    with start_worker(worker_app):
        beat = EmbeddedBeat(web.extensions["celery"])
        beat.start()
        try:
            wait_for(lambda: len(runs_of(web, "worker_only.ping")) >= 2, what="two runs")
        finally:
            beat.stop()
    assert "which this process does not know: beat sends it by name" in caplog.text
    wait_for(lambda: runs_of(web, "worker_only.ping")[0].state.value == "succeeded")
    assert runs_of(web, "worker_only.ping")[0].result == "pong"


# -- real processes ------------------------------------------------------------------------------

PERIODIC_APP = '''
"""An app with one periodic task (every PT_EVERY seconds) that appends to PT_RUNS."""

import os
import time

from flask import Flask

from apps.brokers import config_from_env
from flask_tasks import Tasks
from flask_tasks.periodic import BeatScheduler

tasks = Tasks()


@tasks.periodic(float(os.environ.get("PT_EVERY", "0.5")))
@tasks.task
def tick() -> None:
    with open(os.environ["PT_RUNS"], "a") as f:
        f.write(f"{time.time()} {os.getpid()}\\n")


class ShortLease(BeatScheduler):
    lease_seconds = 1.5


def create_app() -> Flask:
    app = Flask("periodic_app", instance_path=os.environ["FT_INSTANCE"])
    app.config.update(config_from_env())
    app.config.from_prefixed_env()
    tasks.init_app(app)

    @app.get("/pid")
    def pid() -> dict:
        time.sleep(0.2)  # busy long enough for the next request to go to another worker
        return {"pid": os.getpid()}

    return app
'''
APP = "periodic_app:create_app"
TICK = "periodic_app.tick"
RUNNING = "flask-tasks: beat is running 1 periodic task"
STANDING_BY = "flask-tasks: beat is standing by: another beat runs for this app"


@pytest.fixture
def periodic_env(tmp_path: Path) -> Iterator[Callable[..., dict[str, str]]]:
    """Environment for subprocesses running PERIODIC_APP; instance folder tmp_path/instance."""
    (tmp_path / "periodic_app.py").write_text(textwrap.dedent(PERIODIC_APP))
    queue = f"test-{uuid.uuid4().hex[:12]}"
    queues: list[str] = []

    def make(broker: str = "embedded", instance: str = "instance", **extra: str) -> dict[str, str]:
        env = subprocess_env(
            FT_BROKER=broker,
            FT_QUEUE=queue,
            FT_INSTANCE=str(tmp_path / instance),
            PT_RUNS=str(tmp_path / "runs"),
            **extra,
        )
        env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
        if broker == "redis":
            queues.append(queue)
        return env

    yield make
    if queues:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        client.delete(*queues)  # messages no worker took
        client.close()


def reader(make_app: AppFactory, broker: str, env: dict[str, str]) -> Flask:
    """An app in this process that reads the records the subprocesses write."""
    app = make_app(broker, **broker_config(broker, env["FT_QUEUE"]))
    Tasks(app)
    return app


def send_times(app: Flask) -> list[float]:
    return [r.submitted_at.timestamp() for r in runs_of(app, TICK)]


def run_lines(tmp_path: Path) -> list[tuple[float, int]]:
    path = tmp_path / "runs"
    if not path.exists():
        return []
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return [(float(when), int(pid)) for when, pid in lines]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
@pytest.mark.parametrize("reload", [True, False], ids=["reloader", "no-reloader"])
def test_flask_run_runs_beat_once_in_its_dev_worker(
    periodic_env: Any, make_app: AppFactory, tmp_path: Path, reload: bool
) -> None:
    env = periodic_env()
    options = ["--debug"] if reload else []
    proc = Process(flask("--app", APP, *options, "run", "--port", str(free_port())), env)
    try:
        proc.wait_for(RUNNING)
        app = reader(make_app, "embedded", env)
        wait_for(lambda: len(run_lines(tmp_path)) >= 5, what="five runs")
        if reload:  # a code change restarts the server process; the new one takes over
            first_pid = run_lines(tmp_path)[0][1]
            app_file, changed = tmp_path / "periodic_app.py", tmp_path / "changed.tmp"
            changed.write_text(app_file.read_text() + "\n# changed\n")
            changed_at = time.time()
            changed.replace(app_file)  # one change, never a half-written file
            wait_for(lambda: proc.output.count(RUNNING) >= 2, what="the new server's beat")
            restarted_at = time.time()
            wait_for(
                lambda: len([t for t in send_times(app) if t > restarted_at]) >= 3,
                what="runs by the restarted server",
            )
    finally:
        proc.stop()
    runs = run_lines(tmp_path)
    assert STANDING_BY not in proc.output
    if reload:
        # one beat per server process, one at a time; the watcher process never runs one
        servers = proc.output.count("Restarting with")
        assert servers >= 2 and proc.output.count(RUNNING) == servers, proc.output
        assert proc.proc.pid not in {pid for _, pid in runs}
        assert first_pid in {pid for _, pid in runs} and len({pid for _, pid in runs}) >= 2
        assert_one_sender([t for t in send_times(app) if t < changed_at])
        assert_one_sender([t for t in send_times(app) if t > restarted_at])
    else:
        assert proc.output.count(RUNNING) == 1, proc.output
        assert {pid for _, pid in runs} == {proc.proc.pid}
        assert_one_sender(send_times(app))


@pytest.mark.slow
def test_gunicorn_workers_with_dev_workers_run_one_beat(
    periodic_env: Any, make_app: AppFactory
) -> None:
    port = free_port()
    argv = [
        str(Path(sys.executable).with_name("gunicorn")),
        "--workers=2",
        "--no-control-socket",
        f"--bind=127.0.0.1:{port}",
        f"{APP}()",
    ]
    proc = Process(argv, periodic_env(FLASK_TASKS_DEV_WORKER="true"))
    try:
        proc.wait_for("Booting worker")
        pids: set[int] = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:  # each starts its dev worker
            pids |= set(_get_pids(f"http://127.0.0.1:{port}/pid", 4))
        assert len(pids) == 2, proc.output
        proc.wait_for(STANDING_BY)
        app = reader(make_app, "embedded", periodic_env())
        started = time.time()
        wait_for(lambda: len([t for t in send_times(app) if t > started]) >= 6, what="6 runs")
    finally:
        proc.stop()
    assert proc.output.count(STANDING_BY) == 1, proc.output
    assert_one_sender(send_times(app))


def _get_pids(url: str, count: int) -> list[int]:
    """``count`` concurrent requests, so that both sync workers serve one."""
    import concurrent.futures
    import json

    def get(_: int) -> int:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(json.load(response)["pid"])

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(get, range(count)))


@pytest.mark.slow
def test_flask_tasks_beat_beside_a_dev_worker_stands_by_then_takes_over(
    periodic_env: Any, make_app: AppFactory
) -> None:
    env = periodic_env()
    app = reader(make_app, "embedded", env)
    server = Process(flask("--app", APP, "run", "--port", str(free_port())), env)
    beat = Process(flask("--app", APP, "tasks", "beat", "-l", "info"), env)
    try:
        server.wait_for(RUNNING)
        holder = beat.wait_for(STANDING_BY)
        assert f"pid {server.proc.pid} on {socket.gethostname()} (development worker" in holder
        wait_for(lambda: len(send_times(app)) >= 5, what="five runs")
        assert_one_sender(send_times(app))
        server.stop()
        stopped = time.time()
        beat.wait_for(RUNNING, timeout=10)
        wait_for(lambda: len([t for t in send_times(app) if t > stopped]) >= 3, what="takeover")
    finally:
        server.stop()
        beat.stop()
    assert RUNNING not in beat.output.split(STANDING_BY)[0]
    assert_one_sender([t for t in send_times(app) if t > stopped])
    listed = Process(flask("--app", APP, "tasks", "list", "--name", TICK, "--limit", "200"), env)
    listed.proc.wait(30)
    listed.stop()
    assert listed.output.count(TICK) == len(send_times(app)) >= 8


@pytest.mark.slow
@pytest.mark.redis
def test_beats_on_two_hosts_share_the_redis_lease(
    periodic_env: Any, make_app: AppFactory, tmp_path: Path
) -> None:
    """Two instance folders stand for two machines: only the lease in Redis is shared."""
    require_redis()
    scheduler = "FLASK_TASKS_CELERY__beat_scheduler"
    first_env = periodic_env("redis", "host-1", **{scheduler: "periodic_app:ShortLease"})
    second_env = periodic_env("redis", "host-2", **{scheduler: "periodic_app:ShortLease"})
    app = reader(make_app, "redis", first_env)
    argv = flask("--app", APP, "tasks", "beat", "-l", "info")
    first = Process(argv, first_env)
    second: Process | None = None
    try:
        first.wait_for(RUNNING)
        second = Process(argv, second_env)
        second.wait_for(STANDING_BY)
        wait_for(lambda: len(send_times(app)) >= 5, what="five runs")
        first.stop(signal.SIGKILL)  # no goodbye: the lease has to expire (1.5 s)
        killed = time.time()
        second.wait_for(RUNNING, timeout=10)
        wait_for(lambda: len([t for t in send_times(app) if t > killed]) >= 3, what="takeover")
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert list((tmp_path / "host-2").glob("celerybeat-schedule*"))  # the folder was made
    times = send_times(app)
    assert_one_sender([t for t in times if t < killed])
    assert_one_sender([t for t in times if t > killed])
