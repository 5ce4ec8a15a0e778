"""Seed 003's celery_worker.py: a process-wide app context pushed at import."""

from apps.factory import create_app

app = create_app()
app.app_context().push()
celery = app.extensions["celery"]
