"""A fresh app per test, with its own instance folder (an empty queue and record store).
The flask-tasks pytest plugin adds ``tasks_eager`` and ``tasks_worker``, which work on
the app of the ``app`` fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from exports import create_app
from flask import Flask
from flask.testing import FlaskClient


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    config = {"TESTING": True, "TASKS_DEV_WORKER": False, "EXPORT_ROW_SECONDS": 0}
    return create_app(config, instance_path=tmp_path / "instance")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
