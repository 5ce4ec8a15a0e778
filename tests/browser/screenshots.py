"""Take the screenshots of ``<task-progress>`` in docs/screenshots/ (run by hand).

    .venv/bin/python tests/browser/screenshots.py

Runs the browser tests' app (embedded broker, in-process worker) and Debian's Chromium,
then saves: a finished bar with its result, a running one, a failed and a cancelled one,
and all of them on one page.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flask import Flask

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from client_app import count, create_app, explode  # noqa: E402

from browser_support import CHROMIUM, CHROMIUM_ARGS, serving  # noqa: E402
from flask_tasks.testing import TaskChecks, start_worker  # noqa: E402

OUT = HERE.parent.parent / "docs" / "screenshots"


def make_app(instance: str) -> Any:
    def make(broker: str = "embedded", **config: Any) -> Flask:
        app = Flask("screenshots", instance_path=instance)
        app.config.update(TESTING=True, TASKS_DEV_WORKER=False, **config)
        return app

    return make


def main() -> None:
    from playwright.sync_api import sync_playwright

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as instance:
        app = create_app(make_app(os.path.join(instance, "instance")))
        checks = TaskChecks(app)
        with app.app_context():
            done = count.delay(5, 0.05).id
            failed = explode.delay("the CSV file has no header row").id
        with serving(app) as url, start_worker(app), sync_playwright() as playwright:
            checks.wait(done)
            checks.wait(failed)
            with app.app_context():
                cancelled = count.delay(100, 0.05).id
                running = count.delay(300, 0.1).id
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 640, "height": 480}, device_scale_factor=2)
            ids = "&".join(f"id={i}" for i in (done, running, failed, cancelled, "no-such-task"))
            page.goto(f"{url}/page?{ids}&cancelable")
            page.wait_for_function("document.querySelector('#task-4').state === 'running'")
            page.locator("#task-4").get_by_role("button", name="Cancel").click()
            page.wait_for_function("document.querySelector('#task-4').state === 'cancelled'")
            page.wait_for_function("document.querySelector('#task-2').record?.progress")
            time.sleep(2.5)  # some progress and an ETA for the running one
            shots = {
                "task-progress.png": "#task-1",
                "task-progress-running.png": "#task-2",
                "task-progress-failed.png": "#task-3",
                "task-progress-cancelled.png": "#task-4",
            }
            for name, selector in shots.items():
                page.locator(selector).screenshot(path=OUT / name, animations="disabled")
            page.locator("body").screenshot(path=OUT / "task-progress-states.png")
            browser.close()
            with app.app_context():
                app.extensions["tasks"].extension.cancel(running)
    for name in sorted(os.listdir(OUT)):
        print(OUT / name)


if __name__ == "__main__":
    main()
