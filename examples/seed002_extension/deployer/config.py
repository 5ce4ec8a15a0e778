"""Config classes, as a Flask-CeleryExt app has them (legacy ``CELERY_*`` keys work)."""

from __future__ import annotations


class Config:
    """Settings every environment shares."""

    CELERY_TASK_ALWAYS_EAGER = False
    CELERY_TASK_EAGER_PROPAGATES_EXCEPTIONS = True
    # Request headers that travel with a task, for tasks declared request_context=True.
    TASKS_REQUEST_HEADERS = ["Accept-Language", "X-Operator"]
    DEPLOY_SERVERS = ["web-1", "web-2", "worker-1"]
    DEPLOY_STEP_SECONDS = 1.0


class DevelopmentConfig(Config):
    """No broker: the embedded SQLite queue in the instance folder, worked by 'flask run'."""


class ProductionConfig(Config):
    """RabbitMQ for the queue; task records (the result backend) need Redis or a database."""

    CELERY_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
    CELERY_RESULT_BACKEND = "redis://127.0.0.1:6379/0"  # or db+postgresql+psycopg://...


class TestingConfig(Config):
    """For tests: the embedded queue in the test's instance folder, and no waiting."""

    TESTING = True
    TASKS_DEV_WORKER = False
    DEPLOY_STEP_SECONDS = 0.0


CONFIGS: dict[str, type[Config]] = {
    "development": DevelopmentConfig,
    "production": ProductionConfig,
    "testing": TestingConfig,
}
