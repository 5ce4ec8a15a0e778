"""What every app module shares: the Redis database, the no-op body and the progress loop."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable

import redis

REDIS_DB = int(os.environ.get("BENCH_REDIS_DB", "12"))
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
RESULT_TTL_SECONDS = 3600
"""Where a peer's default keeps results for less (RQ 500 s, Dramatiq 10 min), this long, so
that the finished tasks the status workload polls outlive the run."""
SIDE_PREFIX = "bench-suite-side:"
"""Keys the progress task reports its timing on (never counted as a store write)."""


@functools.cache
def side_channel() -> redis.Redis:
    """A plain Redis client, apart from every integration's own connections."""
    return redis.Redis.from_url(REDIS_URL)


def progress_loop(n: int, token: str, report: Callable[[int, int], object] | None) -> float:
    """Call ``report(i, n)`` for i in 1..n (or nothing), time it, push the time on the side.

    The task that runs this is the same for every integration: only ``report`` differs.
    """
    started = time.perf_counter()
    if report is None:
        for i in range(1, n + 1):
            _no_report(i, n)
    else:
        for i in range(1, n + 1):
            report(i, n)
    elapsed = time.perf_counter() - started
    side_channel().rpush(SIDE_PREFIX + token, repr(elapsed))
    return elapsed


def _no_report(i: int, n: int) -> None:
    """The loop without progress still makes one call per iteration, as a fair baseline."""


def wait_side(token: str, timeout: float) -> float:
    """The loop time the task with ``token`` pushed, waiting up to ``timeout`` seconds."""
    # Short waits, repeated: a client's socket timeout (redis-py may set one) never cuts
    # a long wait short.
    deadline = time.monotonic() + timeout
    while True:
        item = side_channel().blpop([SIDE_PREFIX + token], timeout=2)
        if item is not None:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"no progress result for {token} within {timeout:.0f} s")
    side_channel().delete(SIDE_PREFIX + token)
    return float(item[1])
