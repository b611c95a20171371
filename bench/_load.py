"""The load generator: closed-loop GraphQL clients over keep-alive HTTP/1.1 connections, and the
CPU meters that say what the generator and the server spent."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import psutil

from bench._report import percentile


class CpuMeter:
    """CPU seconds of a process (and its children) between start() and stop(), as % of one core."""

    def __init__(self, pid: int | None = None, children: bool = False) -> None:
        self.process = psutil.Process(pid)
        self.children = children
        self._cpu = 0.0
        self._wall = 0.0

    def _cpu_seconds(self) -> float:
        processes = [
            self.process,
            *(self.process.children(recursive=True) if self.children else []),
        ]
        total = 0.0
        for process in processes:
            try:
                times = process.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def start(self) -> CpuMeter:
        self._cpu, self._wall = self._cpu_seconds(), time.perf_counter()
        return self

    def stop(self) -> float:
        """Percent of one core used since start()."""
        wall = time.perf_counter() - self._wall
        return 100.0 * (self._cpu_seconds() - self._cpu) / wall if wall > 0 else math.nan


class GraphQLError(RuntimeError):
    def __init__(self, errors: list[dict[str, Any]]) -> None:
        self.errors = errors
        self.code = (errors[0].get("extensions") or {}).get("code", "?") if errors else "?"
        super().__init__(f"{self.code}: {errors[0].get('message') if errors else errors}")


def graphql_body(query: str, variables: dict[str, Any] | None = None) -> bytes:
    return json.dumps({"query": query, "variables": variables or {}}).encode()


class HttpxConnection:
    """One HTTP/1.1 keep-alive connection through httpx (about 0.8 ms of client CPU a request)."""

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=timeout,
            limits=httpx.Limits(max_connections=1, max_keepalive_connections=1),
            headers={"content-type": "application/json"},
        )

    async def post(self, body: bytes) -> dict[str, Any]:
        response = await self._client.post("/graphql", content=body)
        return _data(response.status_code, response.content)

    async def reset(self) -> None:
        """After a failed request: httpx reconnects by itself."""

    async def close(self) -> None:
        await self._client.aclose()


class RawConnection:
    """One HTTP/1.1 keep-alive connection on bare asyncio streams, like wrk's: a tenth of httpx's
    client CPU, which matters when the load generator shares 2 cores with the server."""

    def __init__(self, base_url: str, timeout: float = 120.0, path: str = "/graphql") -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._head = f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, body: bytes) -> dict[str, Any]:
        return await asyncio.wait_for(self._post(body), self.timeout)

    async def _post(self, body: bytes) -> dict[str, Any]:
        reused = self._writer is not None
        try:
            return await self._exchange(body)
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            partial = getattr(exc, "partial", b"")
            if not reused or partial:
                raise
            # The server closed a keep-alive connection that sat idle (uvicorn's keep-alive
            # timeout) before reading this request: open a new one and send it again.
            await self.close()
            return await self._exchange(body)

    async def _exchange(self, body: bytes) -> dict[str, Any]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        assert self._reader is not None and self._writer is not None
        self._writer.write(f"{self._head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.split(":", 1) for line in header_lines if ":" in line)
        headers = {k.strip().lower(): v.strip() for k, v in headers.items()}
        if "content-length" not in headers:
            raise HttpStatusError(f"no content-length in the response: {status_line}")
        content = await self._reader.readexactly(int(headers["content-length"]))
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return _data(int(status_line.split()[1]), content)

    async def reset(self) -> None:
        """After a failed request the stream may be mid-response: reconnect on the next one."""
        await self.close()

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None


def _data(status: int, content: bytes) -> dict[str, Any]:
    payload = json.loads(content) if content else {}
    if payload.get("errors"):
        raise GraphQLError(payload["errors"])
    if status != 200:
        raise HttpStatusError(f"HTTP {status}: {content[:200]!r}")
    return payload["data"]


class HttpStatusError(RuntimeError):
    pass


# What a broken connection raises, whichever client: counted per request, the connection reopened.
TRANSPORT_ERRORS = (httpx.HTTPError, HttpStatusError, OSError, asyncio.IncompleteReadError, TimeoutError)


Connection = RawConnection
CLIENTS = {"raw": RawConnection, "httpx": HttpxConnection}


@dataclass
class LoadResult:
    clients: int
    requests: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    errors: dict[str, int] = field(default_factory=dict)  # error code -> count
    responses: list[dict[str, Any]] = field(default_factory=list)
    loadgen_cpu_percent: float = math.nan
    server_cpu_percent: float = math.nan

    @classmethod
    def combined(cls, results: Sequence[LoadResult]) -> LoadResult:
        """Several runs at one client count as one: their requests, time, latencies and errors added,
        CPU percentages weighted by each run's time."""
        seconds = sum(r.seconds for r in results)
        errors: dict[str, int] = {}
        for r in results:
            for code, count in r.errors.items():
                errors[code] = errors.get(code, 0) + count
        return cls(
            clients=results[0].clients,
            requests=sum(r.requests for r in results),
            seconds=seconds,
            latencies=[latency for r in results for latency in r.latencies],
            errors=errors,
            loadgen_cpu_percent=sum(r.loadgen_cpu_percent * r.seconds for r in results) / seconds,
            server_cpu_percent=sum(r.server_cpu_percent * r.seconds for r in results) / seconds,
        )

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else math.nan

    def latency_ms(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000.0

    @property
    def server_cpu_ms_per_request(self) -> float:
        return 10.0 * self.server_cpu_percent * self.seconds / self.requests if self.requests else math.nan

    @property
    def loadgen_cpu_ms_per_request(self) -> float:
        return 10.0 * self.loadgen_cpu_percent * self.seconds / self.requests if self.requests else math.nan

    @property
    def error_summary(self) -> str:
        return ", ".join(f"{code} x{count}" for code, count in sorted(self.errors.items())) or "0"


async def run_closed_loop(
    base_url: str,
    bodies: Sequence[bytes],
    clients: int,
    server_pid: int | None = None,
    keep_responses: bool = False,
    client_kind: str = "raw",
    path: str = "/graphql",
    warm: bytes | None = None,
) -> LoadResult:
    """`clients` connections, each sending its next request as soon as the previous one answered,
    until every body in `bodies` was sent once. The clock starts after a cheap request (`warm`;
    by default `{ __typename }`) on each connection has opened it, so connection setup is not
    measured. `path`: another JSON endpoint than /graphql (raw client only)."""
    if path != "/graphql":
        connections = [RawConnection(base_url, path=path) for _ in range(clients)]
    else:
        connections = [CLIENTS[client_kind](base_url) for _ in range(clients)]
    warm = warm or graphql_body("{ __typename }")
    await asyncio.gather(*(c.post(warm) for c in connections))
    queue = iter(enumerate(bodies))
    result = LoadResult(clients=clients, requests=len(bodies), seconds=0.0)
    responses: dict[int, dict[str, Any]] = {}

    async def client(connection: Connection) -> None:
        for index, body in queue:
            started = time.perf_counter()
            try:
                data = await connection.post(body)
            except GraphQLError as exc:
                result.errors[exc.code] = result.errors.get(exc.code, 0) + 1
                continue
            except TRANSPORT_ERRORS as exc:
                name = exc.__class__.__name__
                result.errors[name] = result.errors.get(name, 0) + 1
                await connection.reset()
                continue
            result.latencies.append(time.perf_counter() - started)
            if keep_responses:
                responses[index] = data

    own_cpu = CpuMeter().start()
    server_cpu = CpuMeter(server_pid, children=True).start() if server_pid else None
    started = time.perf_counter()
    try:
        await asyncio.gather(*(client(c) for c in connections))
    finally:
        result.seconds = time.perf_counter() - started
        result.loadgen_cpu_percent = own_cpu.stop()
        if server_cpu is not None:
            result.server_cpu_percent = server_cpu.stop()
        await asyncio.gather(*(c.close() for c in connections))
    result.responses = [responses[i] for i in sorted(responses)]
    return result


def run(main: Callable[[], Any]) -> Any:
    """asyncio.run with uvloop when it is installed (a leaner load generator)."""
    try:
        import uvloop

        return uvloop.run(main())
    except ImportError:
        return asyncio.run(main())
