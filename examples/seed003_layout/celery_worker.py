"""The seed's entry point for Celery's own command:

    celery -A celery_worker.celery worker --loglevel INFO

(``flask --app manage tasks worker`` does the same without this file.)
"""

import os

from app import create_app

app = create_app(os.environ.get("APP_CONFIG", "development"))
# The seed pushed one app context for the whole worker process, so that tasks could use
# current_app (and noted that it does not help under gevent). flask-tasks does not rely
# on it: each task run gets a fresh app context of its own, on every pool (prefork,
# threads, gevent, solo), so g and the database session never carry over from one task
# to the next and teardown functions run after each task. Keeping the push is harmless,
# for code that reads current_app while the worker starts.
app.app_context().push()
celery = app.extensions["celery"]
