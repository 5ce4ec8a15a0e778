"""Seed 003's multi-module layout, on flask-tasks: an app package with config classes,
tasks in ``app/tasks/``, views in ``app/views/``, and the entry points beside it
(``manage.py`` for development, ``wsgi.py`` for a WSGI server, ``celery_worker.py``
for Celery's own command).

    flask --app manage run
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask

from . import mailbox
from .config import CONFIGS
from .extensions import tasks


def create_app(config_name: str | None = None, instance_path: str | Path | None = None) -> Flask:
    """``config_name``: development, production or testing (default: $APP_CONFIG, else
    development). ``instance_path`` (default: $INSTANCE_PATH, else ./instance) holds the
    embedded queue, the task records and the development mailbox."""
    config_name = config_name or os.environ.get("APP_CONFIG", "development")
    instance_path = instance_path or os.environ.get("INSTANCE_PATH")
    app = Flask(__name__, instance_path=os.path.abspath(instance_path) if instance_path else None)
    app.config.from_object(CONFIGS[config_name])
    app.config.from_prefixed_env()  # e.g. FLASK_MAIL_PORT=2525

    tasks.init_app(app)
    mailbox.init_app(app)

    from .views import account
    from .views import mailbox as mailbox_views

    app.register_blueprint(account.bp)
    app.register_blueprint(mailbox_views.bp)
    return app
