"""Subprocesses: start them in their own process group, wait for them, measure their memory,
and never leave one behind (the whole tree is killed when the suite ends, however it ends).
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path


class StepError(RuntimeError):
    """A step of the suite failed: the message names the integration and the step."""


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 25) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name (field 2) may hold spaces: the fields after it follow the last ')'
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (also those that left its process group)."""
    children = _children_map()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def memory_kib(pids: list[int]) -> dict[str, int]:
    """Summed RSS and PSS (KiB) of ``pids`` (PSS shares copy-on-write pages out fairly)."""
    total = {"rss": 0, "pss": 0, "processes": 0}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        total["processes"] += 1
        for line in lines:
            name, _, rest = line.partition(":")
            if name in ("Rss", "Pss"):
                total[name.lower()] += int(rest.split()[0])
    return total


@dataclass
class Processes:
    """Every process the suite started; :meth:`close` kills whatever is left of them."""

    logdir: Path
    procs: list[Proc] = field(default_factory=list)

    def start(
        self, name: str, argv: list[str], env: dict[str, str], cwd: Path | None = None
    ) -> Proc:
        log = self.logdir / f"{name}-{len(self.procs)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc, grace: float = 10.0) -> None:
        """SIGTERM the process (a warm shutdown), then SIGKILL its whole tree if it lingers."""
        pids = tree(proc.pid) if proc.popen.poll() is None else []
        if proc.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.popen.wait(grace)
        # whatever is left: the group, and descendants that made groups of their own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(5)
        if proc in self.procs:
            self.procs.remove(proc)

    def close(self) -> None:
        for proc in list(reversed(self.procs)):
            self.stop(proc, grace=5.0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_http(port: int, proc: Proc, what: str, timeout: float = 30.0) -> None:
    """Wait until the server on ``port`` answers any HTTP request."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen.poll() is not None:
            raise StepError(f"{what}: the server exited at start:\n{proc.tail()}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/__bench_ready__")
            conn.getresponse().read()
            conn.close()
            return
        except OSError as exc:
            if time.monotonic() > deadline:
                raise StepError(
                    f"{what}: no answer within {timeout:.0f} s:\n{proc.tail()}"
                ) from exc
            time.sleep(0.1)
