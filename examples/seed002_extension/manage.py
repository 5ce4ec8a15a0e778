"""The seed's entry point for Celery's own command:

    celery -A manage.celery worker --loglevel INFO

(``flask --app deployer tasks worker`` does the same without this file.)
"""

from deployer import create_app

app = create_app()
celery = app.extensions["celery"]
