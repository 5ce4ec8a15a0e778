"""Seed 002, a Flask-CeleryExt style app on flask-tasks: an extension object at module
level, ``init_app`` in the factory, config classes, and a deploy task that runs with the
request it was sent from.

    flask --app deployer run
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from flask_tasks import Tasks

from .config import CONFIGS, Config

tasks = Tasks()  # was: celery_ext = FlaskCeleryExt()


def create_app(
    config: str | type[Config] | None = None, instance_path: str | Path | None = None
) -> Flask:
    """``config``: a config class, or its name (default: $DEPLOYER_CONFIG, else development).

    ``instance_path`` (default: $INSTANCE_PATH, else ./instance) holds the embedded queue
    and the task records.
    """
    config = config or os.environ.get("DEPLOYER_CONFIG", "development")
    instance_path = instance_path or os.environ.get("INSTANCE_PATH")
    app = Flask(__name__, instance_path=os.path.abspath(instance_path) if instance_path else None)
    app.config.from_object(CONFIGS[config] if isinstance(config, str) else config)
    app.config.from_prefixed_env()
    tasks.init_app(app)  # was: celery_ext.init_app(app)

    from . import views

    app.register_blueprint(views.bp)
    return app
