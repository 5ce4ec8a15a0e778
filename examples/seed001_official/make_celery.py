"""The official pattern's entry point for Celery's own command, unchanged:

    celery -A make_celery worker --loglevel INFO
    celery -A make_celery beat --loglevel INFO

(``flask --app task_app tasks worker`` and ``... tasks beat`` do the same without it.)
"""

from task_app import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
