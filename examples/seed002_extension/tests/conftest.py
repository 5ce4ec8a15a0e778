"""Test fixtures: a fresh app per test (its own instance folder: an empty queue and record
store), in the testing config. The flask-tasks pytest plugin adds ``tasks_eager`` and
``tasks_worker``, which work on the app of the ``app`` fixture."""

from __future__ import annotations

from pathlib import Path

import pytest
from deployer import create_app
from flask import Flask
from flask.testing import FlaskClient


@pytest.fixture
def app(tmp_path: Path) -> Flask:
    return create_app("testing", instance_path=tmp_path / "instance")


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()
