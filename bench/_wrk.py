"""wrk (the C HTTP load generator) as a closed-loop load generator for the benchmarks.

On a 2-core machine the Python load generator (bench/_load.py, asyncio in the bench process) takes
CPU from the server it measures; wrk costs a fraction of it (epoll in C, one thread). run_wrk()
runs `wrk` for a fixed time with a Lua script that sends every request a text of its own from a
file (no text is sent twice, so the cache never hits; after the file's texts a request repeats one
with a unique suffix, still new), and checks each response: not 200, or a body with `"error`
(GraphQL `errors`, OpenAI `error`) counts as an error, and `"cached":true` in a GraphQL body as a
cache hit. The result reads like bench/_load.py's LoadResult (requests/s, latency percentiles,
errors, CPU of the generator and the server), so the tables take either.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from bench._load import CpuMeter

WRK = shutil.which("wrk")
_MARK = "WRK_RESULT "

_SCRIPT = r"""
wrk.method = "POST"
wrk.path = [==[{path}]==]
wrk.headers["Content-Type"] = "application/json"

local prefix, suffix = [==[{prefix}]==], [==[{suffix}]==]
local threads_total = {threads}
local texts = {{}}
-- globals, not locals: done() reads each thread's with thread:get()
counter, wrapped, errors, hits, checked = 0, 0, 0, 0, 0
first_error = ""
local made = 0
local threads = {{}}

function setup(thread)
  thread:set("id", made)
  made = made + 1
  table.insert(threads, thread)
end

function init(args)
  for line in io.lines([==[{texts_file}]==]) do texts[#texts + 1] = line end
end

function request()
  if #texts == 0 then return wrk.format(nil, nil, nil, prefix .. "probe" .. suffix) end  -- wrk's own check
  local i = (id or 0) + counter * threads_total
  counter = counter + 1
  local text = texts[(i % #texts) + 1]
  if i >= #texts then
    wrapped = wrapped + 1
    text = text .. " (again " .. i .. ")"
  end
  return wrk.format(nil, nil, nil, prefix .. text .. suffix)
end

function response(status, headers, body)
  checked = checked + 1
  if status ~= 200 or string.find(body, '"error', 1, true) then
    errors = errors + 1
    if first_error == "" then first_error = string.gsub(status .. " " .. string.sub(body, 1, 200), '[%c"\\]', " ") end
  end
  if string.find(body, '"cached":true', 1, true) then hits = hits + 1 end
end

function done(summary, latency, requests)
  local e, h, c, w, fe = 0, 0, 0, 0, ""
  for _, thread in ipairs(threads) do
    e = e + thread:get("errors")
    h = h + thread:get("hits")
    c = c + thread:get("checked")
    w = w + thread:get("wrapped")
    if fe == "" then fe = thread:get("first_error") end
  end
  local s = summary.errors
  io.write(string.format(
    '{mark}{{"requests": %d, "duration_us": %d, "bad": %d, "hits": %d, "checked": %d, "wrapped": %d, ' ..
    '"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d, ' ..
    '"p50_us": %d, "p90_us": %d, "p99_us": %d, "max_us": %d, "mean_us": %f, "first_error": "%s"}}\n',
    summary.requests, summary.duration, e, h, c, w, s.connect, s.read, s.write, s.status, s.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean, fe))
end
"""


def available() -> bool:
    return WRK is not None


@dataclass
class WrkResult:
    """One wrk run; the attributes the benchmarks' tables read from a LoadResult."""

    clients: int
    requests: int  # completed responses (good or not)
    seconds: float
    errors: dict[str, int] = field(default_factory=dict)
    percentiles_ms: dict[float, float] = field(default_factory=dict)
    cache_hits: int = 0
    repeated_texts: int = 0  # requests past the texts file (sent with a unique suffix)
    loadgen_cpu_percent: float = math.nan
    server_cpu_percent: float = math.nan
    first_error: str = ""
    responses: list = field(default_factory=list)  # never kept (the Python generator's field)

    @property
    def ok(self) -> int:
        return self.requests - sum(self.errors.values())

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else math.nan

    def latency_ms(self, q: float) -> float:
        return self.percentiles_ms.get(float(q), math.nan)

    @property
    def latencies(self) -> list[float]:  # no per-request latencies from wrk
        return []

    @property
    def server_cpu_ms_per_request(self) -> float:
        return 10.0 * self.server_cpu_percent * self.seconds / self.requests if self.requests else math.nan

    @property
    def loadgen_cpu_ms_per_request(self) -> float:
        return 10.0 * self.loadgen_cpu_percent * self.seconds / self.requests if self.requests else math.nan

    @property
    def cached_percent(self) -> float:
        return 100.0 * self.cache_hits / self.requests if self.requests else math.nan

    @property
    def error_summary(self) -> str:
        return ", ".join(f"{code} x{count}" for code, count in sorted(self.errors.items()) if count) or "0"

    @classmethod
    def combined(cls, results: Sequence[WrkResult]) -> WrkResult:
        """Several runs as one: requests, time and errors added; CPU weighted by time; latency
        percentiles time-weighted means of the runs' (an approximation: wrk gives no samples)."""
        seconds = sum(r.seconds for r in results)
        errors: dict[str, int] = {}
        for r in results:
            for code, count in r.errors.items():
                errors[code] = errors.get(code, 0) + count
        qs = set().union(*(r.percentiles_ms for r in results))
        return cls(
            clients=results[0].clients,
            requests=sum(r.requests for r in results),
            seconds=seconds,
            errors=errors,
            percentiles_ms={q: sum(r.percentiles_ms.get(q, math.nan) * r.seconds for r in results) / seconds for q in qs},
            cache_hits=sum(r.cache_hits for r in results),
            repeated_texts=sum(r.repeated_texts for r in results),
            loadgen_cpu_percent=sum(r.loadgen_cpu_percent * r.seconds for r in results) / seconds,
            server_cpu_percent=sum(r.server_cpu_percent * r.seconds for r in results) / seconds,
        )


def json_string_content(text: str) -> str:
    """`text` as it appears between the quotes of a JSON string (one line)."""
    return json.dumps(text)[1:-1]


def run_wrk(
    base_url: str,
    path: str,
    body_prefix: str,
    body_suffix: str,
    texts: Sequence[str],
    connections: int,
    seconds: float,
    server_pid: int | None = None,
    threads: int = 1,
    timeout_s: int = 60,
) -> WrkResult:
    """wrk for `seconds` with `connections` keep-alive connections (closed loop), each request's
    body `body_prefix + text + body_suffix` with a text of its own (JSON string content, see
    json_string_content). Blocking: call it in a thread from asyncio code."""
    if WRK is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    parts = urlsplit(base_url)
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as folder:
        texts_file = Path(folder) / "texts.txt"
        texts_file.write_text("".join(json_string_content(t) + "\n" for t in texts))
        script = Path(folder) / "load.lua"
        for piece in (path, body_prefix, body_suffix, str(texts_file)):
            if "]==]" in piece or "\n" in piece:
                raise ValueError(f"cannot embed {piece!r} in the Lua script")
        script.write_text(
            _SCRIPT.format(path=path, prefix=body_prefix, suffix=body_suffix, threads=threads,
                           texts_file=texts_file, mark=_MARK)  # fmt: skip
        )
        command = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{max(1, round(seconds))}s",
                   "--timeout", f"{timeout_s}s", "-s", str(script), f"{parts.scheme}://{parts.netloc}{path}"]  # fmt: skip
        server_cpu = CpuMeter(server_pid, children=True).start() if server_pid else None
        own = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        completed = subprocess.run(command, capture_output=True, text=True, timeout=seconds + timeout_s + 30)
        wall = time.perf_counter() - started
        server_cpu_percent = server_cpu.stop() if server_cpu else math.nan
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0 or _MARK not in completed.stdout:
        raise RuntimeError(f"wrk failed ({completed.returncode}): {completed.stdout[-2000:]} {completed.stderr[-2000:]}")
    line = next(line for line in completed.stdout.splitlines() if line.startswith(_MARK))
    data = json.loads(line[len(_MARK) :])
    duration = data["duration_us"] / 1e6
    wrk_cpu = (after.ru_utime + after.ru_stime) - (own.ru_utime + own.ru_stime)
    errors = {
        "bad response": int(data["bad"]),
        **{f"socket {kind}": int(data[kind]) for kind in ("connect", "read", "write", "timeout")},
    }
    return WrkResult(
        clients=connections,
        requests=int(data["requests"]),
        seconds=duration,
        errors=errors,
        percentiles_ms={50.0: data["p50_us"] / 1000, 90.0: data["p90_us"] / 1000, 99.0: data["p99_us"] / 1000,
                        100.0: data["max_us"] / 1000},  # fmt: skip
        cache_hits=int(data["hits"]),
        repeated_texts=int(data["wrapped"]),
        loadgen_cpu_percent=100.0 * wrk_cpu / wall,
        server_cpu_percent=server_cpu_percent,
        first_error=data.get("first_error", ""),
    )


def summary_line(result: WrkResult) -> str:
    """wrk's own numbers, for a progress line."""
    return (
        f"{result.per_second:8.1f} req/s  p50 {result.latency_ms(50):7.1f} ms  p99 {result.latency_ms(99):7.1f} ms  "
        f"errors {result.error_summary}  wrk CPU {result.loadgen_cpu_percent:.0f}%  "
        f"server CPU {result.server_cpu_percent:.0f}%"
    )

