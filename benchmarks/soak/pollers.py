"""Status pollers: many clients following tasks through ``GET /tasks/<id>``, as browsers do.

Each poller process runs ``pollers`` clients on one asyncio loop, each with its own
keep-alive HTTP/1.1 connection. A client takes the oldest task id it has not followed yet,
polls it every ``interval`` seconds until the record is final, then takes the next one (so
clients that fall behind catch up through finished records, one poll each). Every answer
must be a 200 holding a record with a known state; anything else is counted as an error.
The latency of each request (from writing it to having read the whole answer) is kept.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import multiprocessing
import queue
import threading
import time
from array import array
from dataclasses import dataclass, field
from typing import Any

FINAL = {"succeeded", "failed", "cancelled"}
STATES = FINAL | {"queued", "running", "retrying"}


@dataclass
class PollerResult:
    """What one poller process measured."""

    started: float
    ended: float
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))
    at: array[float] = field(default_factory=lambda: array("d"))
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    followed: int = 0
    seen_final: int = 0
    states_seen: dict[str, int] = field(default_factory=dict)


class _Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            assert self.reader is not None
            try:
                self.writer.write(f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode())
                head = await self.reader.readuntil(b"\r\n\r\n")
                status, length, close = _parse_head(head)
                body = await self.reader.readexactly(length)
            except (ConnectionError, asyncio.IncompleteReadError):
                await self.close()
                if attempt == 2:
                    raise
                continue
            if close:
                await self.close()
            return status, body
        raise AssertionError("unreachable")

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError):
                await self.writer.wait_closed()
        self.reader = self.writer = None


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length, close = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    return status, length, close


async def _client(
    port: int,
    prefix: str,
    ids: collections.deque[str],
    interval: float,
    stop: threading.Event,
    result: PollerResult,
) -> None:
    conn = _Connection(port)
    latencies, at, statuses = result.latencies_ms, result.at, result.statuses
    try:
        while not stop.is_set():
            if not ids:
                await asyncio.sleep(0.05)
                continue
            task_id = ids.popleft()
            result.followed += 1
            while not stop.is_set():
                started = time.perf_counter()
                try:
                    status, body = await conn.get(f"{prefix}/{task_id}")
                except (OSError, asyncio.IncompleteReadError, ValueError, IndexError) as exc:
                    result.errors.append(f"{task_id}: {type(exc).__name__}: {exc}")
                    await asyncio.sleep(interval)
                    continue
                ended = time.perf_counter()
                latencies.append((ended - started) * 1000)
                at.append(ended)
                statuses[status] = statuses.get(status, 0) + 1
                state = None
                if status == 200:
                    with contextlib.suppress(ValueError, AttributeError):
                        state = json.loads(body).get("state")
                if state not in STATES:
                    if len(result.errors) < 1000:
                        result.errors.append(f"{task_id}: {status} {body[:200]!r}")
                    break
                result.states_seen[state] = result.states_seen.get(state, 0) + 1
                if state in FINAL:
                    result.seen_final += 1
                    break
                await asyncio.sleep(interval)
    finally:
        await conn.close()


async def _run(
    port: int,
    prefix: str,
    clients: int,
    interval: float,
    ids: collections.deque[str],
    stop: threading.Event,
) -> PollerResult:
    result = PollerResult(started=time.perf_counter(), ended=0.0)
    await asyncio.gather(
        *(_client(port, prefix, ids, interval, stop, result) for _ in range(clients))
    )
    result.ended = time.perf_counter()
    return result


def poller_main(
    port: int,
    prefix: str,
    clients: int,
    interval: float,
    inbox: multiprocessing.Queue[str | None],
    outbox: multiprocessing.Queue[dict[str, Any]],
) -> None:
    """A poller process: follow the ids sent to ``inbox`` until ``None`` arrives."""
    ids: collections.deque[str] = collections.deque()
    stop = threading.Event()

    def feed() -> None:
        while True:
            try:
                item = inbox.get(timeout=0.5)
            except queue.Empty:
                continue
            if item is None:
                stop.set()
                return
            ids.append(item)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    result = asyncio.run(_run(port, prefix, clients, interval, ids, stop))
    feeder.join(5)
    outbox.put(
        {
            "started": result.started,
            "ended": result.ended,
            "latencies_ms": result.latencies_ms.tobytes(),
            "at": result.at.tobytes(),
            "statuses": result.statuses,
            "errors": result.errors[:1000],
            "error_count": len(result.errors),
            "followed": result.followed,
            "seen_final": result.seen_final,
            "states_seen": result.states_seen,
        }
    )
