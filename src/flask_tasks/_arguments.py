"""Checks on task arguments before they are sent: plain JSON only, and not too big."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

_MAX_DEPTH = 64

# Type name -> how to pass such a value instead.
_HINTS = {
    "datetime": "pass an ISO 8601 string",
    "date": "pass an ISO 8601 string",
    "time": "pass an ISO 8601 string",
    "timedelta": "pass a number of seconds",
    "Decimal": "pass a string",
    "UUID": "pass a string",
    "bytes": "pass text, or base64-encode it",
    "bytearray": "pass text, or base64-encode it",
    "set": "pass a list",
    "frozenset": "pass a list",
    "PosixPath": "pass a string",
    "WindowsPath": "pass a string",
}
_DEFAULT_HINT = (
    "pass plain JSON data (str, int, float, bool, None, list, dict); "
    "for a database object, pass its id and load it in the task"
)


class _Size:
    """Bounds on the JSON-encoded size, so most calls need no trial encoding."""

    __slots__ = ("high", "low")

    def __init__(self) -> None:
        self.low = 0
        self.high = 0


def _walk(value: Any, path: str, depth: int, size: _Size) -> None:
    kind = type(value)
    if kind is str:
        try:
            encoded = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise ValueError(
                f"{path}: the string contains a lone surrogate and is not valid UTF-8; "
                "pass valid text"
            ) from None
        size.low += encoded + 2
        size.high += 12 * len(value) + 2
        return
    if kind is int or kind is bool or value is None:
        size.low += 1
        size.high += 24 if kind is not int else len(str(value)) + 1
        return
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"{path}: {value!r} is not valid JSON; pass None or a string")
        size.low += 1
        size.high += 26
        return
    if depth >= _MAX_DEPTH:
        raise ValueError(f"{path}: nested deeper than {_MAX_DEPTH} levels; pass flatter data")
    if kind is dict:
        size.low += 2
        size.high += 2
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(
                    f"{path}: dict key {key!r} ({type(key).__name__}) is not a string; "
                    "JSON object keys must be strings"
                )
            _walk(key, path, depth + 1, size)
            _walk(item, f"{path}[{json.dumps(key)}]", depth + 1, size)
        return
    if kind is list or kind is tuple:
        size.low += 2
        size.high += 2 + len(value)
        for index, item in enumerate(value):
            _walk(item, f"{path}[{index}]", depth + 1, size)
        return
    name = kind.__name__
    raise TypeError(f"{path}: {name} is not JSON serializable; {_HINTS.get(name, _DEFAULT_HINT)}")


def check_arguments(
    task_name: str,
    args: Sequence[Any] | None,
    kwargs: Mapping[str, Any] | None,
    max_bytes: int,
) -> None:
    """Refuse arguments that are not plain JSON, or bigger than ``max_bytes`` once encoded.

    Raises ``TypeError`` for a value of the wrong type and ``ValueError`` for NaN, lone
    surrogates, excessive nesting and size, naming the path of the value, e.g.
    ``args[1]["when"]: datetime is not JSON serializable; pass an ISO 8601 string``.
    """
    size = _Size()
    if args:
        if type(args) not in (list, tuple):
            raise TypeError(f"args must be a list or tuple, not {type(args).__name__}")
        for index, item in enumerate(args):
            _walk(item, f"args[{index}]", 1, size)
            if size.low > max_bytes:
                break
    if kwargs and size.low <= max_bytes:
        for key, item in kwargs.items():
            _walk(item, f"kwargs[{json.dumps(key)}]", 1, size)
            if size.low > max_bytes:
                break
    if size.high <= max_bytes:
        return
    exact = size.low
    if exact <= max_bytes:
        encoded = json.dumps([args or [], kwargs or {}], separators=(",", ":"))
        exact = len(encoded.encode("utf-8"))
        if exact <= max_bytes:
            return
    raise ValueError(
        f"The arguments of task {task_name!r} are over {exact:,} bytes as JSON, above the "
        f"TASKS_MAX_ARGUMENT_BYTES limit of {max_bytes:,}. Store large data elsewhere "
        "(a file, a database row) and pass its id, or raise the limit."
    )


def check_result(task_name: str, value: Any) -> None:
    """Refuse a return value holding NaN or an infinity: JSON has no such numbers, and a
    record with one would make every API answer about the task invalid JSON.

    Other values are left to the result serializer, which refuses what it cannot encode.
    Raises ``ValueError`` naming where the number is, e.g. ``result["ratio"]``.
    """
    stack: list[tuple[Any, str, int]] = [(value, "result", 0)]
    while stack:
        item, path, depth = stack.pop()
        kind = type(item)
        if kind is float:
            if not math.isfinite(item):
                raise ValueError(
                    f"Task {task_name!r} returned {item!r} at {path}, which is not valid "
                    "JSON; return None or a string instead."
                )
        elif depth < _MAX_DEPTH:
            if isinstance(item, dict):
                stack.extend(
                    (v, f"{path}[{json.dumps(str(k))}]", depth + 1) for k, v in item.items()
                )
            elif isinstance(item, (list, tuple)):
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
