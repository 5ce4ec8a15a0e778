"""The seed's entry points:

flask --app manage run
celery -A manage:celery_app worker --loglevel INFO
"""

from app import create_app

app = create_app()
celery_app = app.extensions["celery"]
