"""Seed 004: tasks declared before the app exists, bound when the factory runs.

The seed collected task functions in a dict and decorated them with the Celery app once
``create_app`` had made it, "like a blueprint". ``Tasks`` does that: ``@tasks.task`` works
at import time, and ``tasks.init_app(app)`` binds every task declared so far (and later)
to the app's Celery app.

    flask --app manage run
"""

from __future__ import annotations

import os

from flask import Flask

from app.celerytasks import tasks


def create_app() -> Flask:
    # INSTANCE_PATH=/some/dir keeps the embedded queue and the records out of ./instance.
    instance = os.environ.get("INSTANCE_PATH")
    app = Flask(__name__, instance_path=os.path.abspath(instance) if instance else None)
    app.config["TEST_FOR_APP_CONTEXT"] = "read from the app config, inside the task"
    app.config.from_prefixed_env()  # e.g. FLASK_TEST_FOR_APP_CONTEXT=Espresso
    tasks.init_app(app)

    from app.views import bp

    app.register_blueprint(bp)
    return app
