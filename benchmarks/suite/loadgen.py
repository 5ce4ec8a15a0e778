"""Load: wrk (requests/s and the latency distribution) and a small keep-alive HTTP client."""

from __future__ import annotations

import http.client
import json
import subprocess
from pathlib import Path
from typing import Any

from .procs import StepError

PERCENTILES = [*range(1, 100), 99.5, 99.9]

_DONE = """
done = function(summary, latency, requests)
  local parts = {}
  for _, p in ipairs(PCTS) do
    parts[#parts + 1] = string.format('"%g":%d', p, latency:percentile(p))
  end
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"status_errors":%d,"socket_errors":%d,' ..
    '"mean_us":%.1f,"max_us":%d,"latency_us":{%s}}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency.mean, latency.max, table.concat(parts, ",")))
end
"""

_SEED = """
local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("seed", counter * 7919)
end
init = function(args)
  math.randomseed(seed)
end
"""


def write_script(path: Path, *, method: str = "GET", paths: list[str] | None = None) -> Path:
    """A wrk script: ``method``, one URL or a random pick among ``paths``, and a JSON summary."""
    lines = [f"PCTS = {{{', '.join(f'{p:g}' for p in PERCENTILES)}}}"]
    lines.append(f'wrk.method = "{method}"')
    if paths:
        lines.append("local paths = {" + ",".join(f'"{p}"' for p in paths) + "}")
        lines.append(_SEED)
        lines.append(
            "request = function()\n  return wrk.format(nil, paths[math.random(#paths)])\nend"
        )
    lines.append(_DONE)
    path.write_text("\n".join(lines))
    return path


def wrk(
    url: str,
    script: Path,
    *,
    seconds: float,
    connections: int,
    threads: int,
    what: str,
) -> dict[str, Any]:
    """Run wrk; return requests/s, the latency percentiles (ms) and the raw summary."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-s",
        str(script),
        url,
    ]
    try:
        out = subprocess.run(
            argv, capture_output=True, text=True, check=True, timeout=seconds + 60
        ).stdout
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        raise StepError(f"{what}: wrk failed: {exc}") from exc
    line = next((x for x in out.splitlines() if x.startswith("BENCHJSON ")), None)
    if line is None:
        raise StepError(f"{what}: wrk printed no summary:\n{out}")
    raw = json.loads(line.removeprefix("BENCHJSON "))
    if raw["status_errors"] or raw["socket_errors"] or not raw["requests"]:
        raise StepError(
            f"{what}: {raw['status_errors']} non-2xx answers, {raw['socket_errors']} socket "
            f"errors out of {raw['requests']} requests: the route fails, no benchmark:\n{out}"
        )
    latency = {k: v / 1000 for k, v in raw["latency_us"].items()}
    return {
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "requests": raw["requests"],
        "p50": latency["50"],
        "p95": latency["95"],
        "p99": latency["99"],
        "mean": raw["mean_us"] / 1000,
        "max": raw["max_us"] / 1000,
        "cdf": latency,
    }


class Client:
    """One keep-alive HTTP/1.1 connection (reconnects when the server closes it)."""

    def __init__(self, port: int, what: str) -> None:
        self.port = port
        self.what = what
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def request(self, method: str, path: str) -> tuple[int, Any]:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, headers={"Content-Length": "0"})
                response = self.conn.getresponse()
                body = response.read()
                break
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt == 2:
                    raise
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = body.decode(errors="replace")
        return response.status, data

    def submit(self) -> str:
        status, data = self.request("POST", "/submit")
        if status != 202 or not isinstance(data, dict) or "id" not in data:
            raise StepError(f"{self.what}: POST /submit answered {status}: {data!r}")
        return str(data["id"])

    def close(self) -> None:
        self.conn.close()
