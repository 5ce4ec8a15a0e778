"""The extension object, created before any app exists (the factory calls ``init_app``)."""

from flask_tasks import Tasks

tasks = Tasks()
