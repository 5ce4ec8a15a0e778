"""Where task records live: a Redis store and an SQL store behind one contract."""

from __future__ import annotations

import datetime
from typing import Any

from .base import DEFAULT_PREFIX, DEFAULT_RETENTION, RecordStore

REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def create_store(
    url: str,
    *,
    retention: datetime.timedelta = DEFAULT_RETENTION,
    prefix: str = DEFAULT_PREFIX,
    **options: Any,
) -> RecordStore:
    """Open the store at ``url``: a Redis URL, or an SQLAlchemy database URL.

    ``prefix`` names the store's Redis keys (``<prefix>:...``) or SQL tables
    (``<prefix>_record``), so several apps can share one server. ``options`` go to the
    store's constructor (``busy_timeout``, ``connect_timeout`` for SQL).
    """
    if url.startswith(REDIS_SCHEMES):
        from .redis import RedisStore

        return RedisStore(url, retention=retention, prefix=prefix, **options)
    from .sql import SQLStore

    return SQLStore(url, retention=retention, prefix=prefix, **options)
