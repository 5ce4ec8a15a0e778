from __future__ import annotations

import datetime
import decimal
import uuid
from typing import Any

import pytest

from flask_tasks._arguments import check_arguments


def check(*args: Any, limit: int = 1 << 20, **kwargs: Any) -> None:
    check_arguments("t", args, kwargs, limit)


def test_plain_json_passes() -> None:
    check(1, 2.5, "x", None, True, [1, (2, 3)], {"a": {"b": [None]}}, k={"x": 1})


def test_datetime_names_its_path_and_the_fix() -> None:
    with pytest.raises(TypeError) as info:
        check(1, {"when": datetime.datetime(2026, 1, 1)})
    assert str(info.value) == (
        'args[1]["when"]: datetime is not JSON serializable; pass an ISO 8601 string'
    )


@pytest.mark.parametrize(
    ("value", "hint"),
    [
        (decimal.Decimal("1.5"), "Decimal is not JSON serializable; pass a string"),
        (uuid.uuid4(), "UUID is not JSON serializable; pass a string"),
        (b"raw", "bytes is not JSON serializable"),
        ({1, 2}, "set is not JSON serializable; pass a list"),
        (object(), "pass its id and load it in the task"),
    ],
)
def test_other_types_name_a_fix(value: Any, hint: str) -> None:
    with pytest.raises(TypeError) as info:
        check(v=[value])
    assert str(info.value).startswith('kwargs["v"][0]: ')
    assert hint in str(info.value)


def test_non_string_dict_keys_are_refused() -> None:
    with pytest.raises(TypeError, match=r"args\[0\]: dict key 1 \(int\) is not a string"):
        check({1: "a"})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_refused(value: float) -> None:
    with pytest.raises(ValueError, match=r"args\[0\]\[\"x\"\]: .* is not valid JSON"):
        check({"x": value})


def test_lone_surrogate_is_refused() -> None:
    with pytest.raises(ValueError, match="lone surrogate"):
        check("bad \udc80 text")


def test_deep_nesting_is_refused() -> None:
    value: Any = 1
    for _ in range(200):
        value = [value]
    with pytest.raises(ValueError, match="nested deeper than"):
        check(value)


def test_size_limit() -> None:
    check("x" * 900, limit=1000)
    with pytest.raises(ValueError, match="TASKS_MAX_ARGUMENT_BYTES limit of 1,000"):
        check("x" * 1000, limit=1000)
    # non-ASCII text is escaped by the JSON encoder: counted as sent
    with pytest.raises(ValueError, match="TASKS_MAX_ARGUMENT_BYTES"):
        check("é" * 200, limit=1000)
    check("é" * 100, limit=1000)


def test_huge_payload_is_refused_quickly() -> None:
    big = "x" * (100 * 1024 * 1024)
    with pytest.raises(ValueError, match="TASKS_MAX_ARGUMENT_BYTES"):
        check(big)
