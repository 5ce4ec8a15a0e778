"""The official pattern's entry point: celery -A apps.make_celery worker."""

from apps.factory import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
