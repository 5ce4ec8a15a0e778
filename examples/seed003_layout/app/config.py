"""Config classes: the base one, and one per environment."""

from __future__ import annotations

import os


class BaseConfig:
    MAIL_SERVER = "127.0.0.1"
    MAIL_PORT = 8025
    MAIL_SENDER = "Example <noreply@example.test>"
    MAIL_DEBUG_SERVER = False  # start a local SMTP server that keeps what it receives


class DevelopmentConfig(BaseConfig):
    """No broker: the embedded SQLite queue, worked by 'flask run'. Mail goes to the local
    SMTP server the app starts itself; /mailbox shows what it received."""

    MAIL_DEBUG_SERVER = True


class ProductionConfig(BaseConfig):
    """Redis for the queue and the task records; a real mail server."""

    TASKS_BROKER_URL = "redis://127.0.0.1:6379/0"
    TASKS_RESULT_BACKEND = "redis://127.0.0.1:6379/0"
    MAIL_SERVER = os.environ.get("MAIL_SERVER", "127.0.0.1")
    MAIL_PORT = int(os.environ.get("MAIL_PORT", "25"))


class TestingConfig(BaseConfig):
    TESTING = True
    TASKS_DEV_WORKER = False


CONFIGS: dict[str, type[BaseConfig]] = {
    "development": DevelopmentConfig,
    "production": ProductionConfig,
    "testing": TestingConfig,
}
