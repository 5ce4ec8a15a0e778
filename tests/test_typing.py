from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.mark.slow
def test_tasks_are_typed_with_the_functions_signature() -> None:
    from mypy import api

    stdout, stderr, status = api.run(
        [
            "--strict",
            "--warn-unused-ignores",
            "--python-version",
            "3.11",
            "--no-incremental",
            "--config-file",
            str(HERE.parent / "pyproject.toml"),
            str(HERE / "typing" / "check_tasks.py"),
        ]
    )
    assert status == 0, stdout + stderr
