"""Jobs through a real server (keys required, the tests' PostgreSQL and Redis, the bundled model):
ingestFiles over real multipart HTTP (Markdown, HTML, a PDF, JSON Lines), startIngestJob,
jobProgress over WebSocket, cancelJob, access, and a kill -9 mid-job resumed after a restart
with each document stored and counted once."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

from app.services.jobs import BATCHES_IN_FLIGHT
from tests.e2e.access_support import ADMIN_KEY, codes
from tests.e2e.conftest import bundled_server
from tests.support.npm import npm_install
from tests.support.databases import temporary_database
from tests.support.pdf import minimal_pdf
from tests.support.polling import poll
from tests.support.server import LiveServer

BATCH = 25
JOB_FIELDS = """id kind collection state documentsTotal documentsDone documentsFailed chunksDone bytesTotal bytesDone
    percent documentsPerSecond message replica createdAt updatedAt finishedAt errors(first: 50) { index id code message }"""
PREFLIGHT = {"Apollo-Require-Preflight": "true"}


def graphql(server: LiveServer, query: str, variables: dict | None = None, key: str = ADMIN_KEY) -> dict[str, Any]:
    response = server.http.post(
        server.url + "/graphql",
        json={"query": query, "variables": variables or {}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return response.json()


def data(server: LiveServer, query: str, variables: dict | None = None, key: str = ADMIN_KEY) -> dict[str, Any]:
    body = graphql(server, query, variables, key)
    assert "errors" not in body, body
    return body["data"]


def upload(
    server: LiveServer, collection: str, files: list[tuple[str, bytes, str]], metadata: dict | None = None,
    key: str = ADMIN_KEY, headers: dict | None = None,
) -> httpx.Response:
    """ingestFiles as the GraphQL multipart request spec sends it: operations, map, then the files."""
    operations = {
        "query": f"mutation($c: String!, $f: [Upload!]!, $m: JSON) {{ ingestFiles(collection: $c, files: $f, metadata: $m) {{ {JOB_FIELDS} }} }}",
        "variables": {"c": collection, "f": [None] * len(files), "m": metadata},
    }
    mapping = {str(i): [f"variables.f.{i}"] for i in range(len(files))}
    parts = [(str(i), (name, content, content_type)) for i, (name, content, content_type) in enumerate(files)]
    return server.http.post(
        server.url + "/graphql",
        data={"operations": json.dumps(operations), "map": json.dumps(mapping)},
        files=parts,
        headers={"Authorization": f"Bearer {key}", **(PREFLIGHT if headers is None else headers)},
        timeout=300,
    )


def job_of(server: LiveServer, job_id: str) -> dict[str, Any]:
    return data(server, f"query($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}", {"id": job_id})["job"]


def wait_for_end(server: LiveServer, job_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def ended() -> bool:
        seen.update(job_of(server, job_id))
        return seen["state"] in ("SUCCEEDED", "FAILED", "CANCELLED")

    poll(ended, f"job {job_id} ends", attempts=2_400)
    return seen


def create_collection(server: LiveServer, name: str, chunking: bool = False) -> None:
    extra = ", chunking: {maxTokens: 96, overlapTokens: 16}" if chunking else ""
    data(server, f'mutation {{ createCollection(name: "{name}"{extra}) {{ name }} }}')


def lines(prefix: str, count: int, writer: str = "bulk") -> bytes:
    rows = [
        {"id": f"{prefix}-{i}", "text": f"Inventory note {i} of {prefix}: crate {i} sits in aisle {i % 17}; code {prefix}q{i}x.",
         "metadata": {"n": i, "writer": writer}}
        for i in range(count)
    ]  # fmt: skip
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def hits(server: LiveServer, collection: str, query: str, mode: str, limit: int = 3) -> list[str]:
    found = data(
        server,
        "query($c: String!, $q: String!, $m: SearchMode!, $l: Int!) { search(collection: $c, query: $q, mode: $m, limit: $l) { hits { id } } }",
        {"c": collection, "q": query, "m": mode, "l": limit},
    )
    return [h["id"] for h in found["search"]["hits"]]


@pytest.fixture(scope="module")
def jobs_server(tmp_path_factory) -> Iterator[LiveServer]:
    with temporary_database_sync("citadel_jobs") as url:
        server = bundled_server(
            tmp_path_factory.mktemp("jobs"),
            url,
            "e2e-jobs.log",
            CITADEL_REPLICA_ID="jobs-a",
            CITADEL_AUTH__REQUIRED="true",
            CITADEL_AUTH__ADMIN_KEY=ADMIN_KEY,
            CITADEL_INGEST__JOB_BATCH_DOCUMENTS=str(BATCH),
            CITADEL_DOWNLOADS__PROGRESS_INTERVAL_SECONDS="0.05",
            CITADEL_LIMITS__MAX_UPLOAD_BYTES=str(2 << 20),
        )
        server.database_url = url  # type: ignore[attr-defined]
        server.start()
        try:
            yield server
        finally:
            server.stop()


class temporary_database_sync:
    """tests.support.databases.temporary_database for a synchronous fixture."""

    def __init__(self, prefix: str) -> None:
        self._manager = temporary_database(prefix)
        self._loop = asyncio.new_event_loop()

    def __enter__(self) -> str:
        return self._loop.run_until_complete(self._manager.__aenter__())

    def __exit__(self, *exc: Any) -> None:
        try:
            self._loop.run_until_complete(self._manager.__aexit__(*exc))
        finally:
            self._loop.close()


async def count_rows(database_url: str, collection: str) -> tuple[int, int]:
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT count(*) AS n, count(DISTINCT id) AS ids FROM documents WHERE collection = $1", collection)
    finally:
        await conn.close()
    return row["n"], row["ids"]


# -- files ----------------------------------------------------------------------------------

MARKDOWN = b"""# Pump guide

## Priming

Before the first run, prime the pump: the ZX-5512-Q valve must be opened until water flows without bubbles.

## Storage

Drain the housing before winter so that frost cannot crack it.
"""
HTML_PAGE = b"""<!doctype html><html><head><title>Espresso care</title>
<style>body { font-family: stylezebra; }</style>
<script>const hidden = "scriptzebra"; if (1 < 2) { console.log("</p>"); }</script></head>
<body><h1>Descaling</h1><p>When the display shows QT-7781-K, the espresso machine needs descaling with citric acid.</p>
</body></html>"""


def test_files_of_every_kind_become_searchable_documents(jobs_server: LiveServer) -> None:
    name = f"files-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name, chunking=True)
    pdf = minimal_pdf(
        [["Warranty terms for the garden hose reel."], ["Replace the PV-4410-M gasket every two years to stop leaks at the tap."]]
    )
    bulk = lines("jl", 300)
    files = [
        ("guide.md", MARKDOWN, "text/markdown"),
        ("page.html", HTML_PAGE, "text/html"),
        ("warranty.pdf", pdf, "application/octet-stream"),  # a type the client did not know: read from the content
        ("bulk.jsonl", bulk, "application/x-ndjson"),
    ]
    response = upload(jobs_server, name, files, metadata={"team": "docs"})
    assert response.status_code == 200, response.text
    started = response.json()["data"]["ingestFiles"]
    assert started["kind"] == "INGEST" and started["collection"] == name and started["replica"] == "jobs-a"
    assert started["documentsTotal"] == 303 and started["bytesTotal"] == sum(len(f[1]) for f in files)

    job = wait_for_end(jobs_server, started["id"])
    assert job["state"] == "SUCCEEDED", job
    assert (job["documentsDone"], job["documentsFailed"], job["errors"]) == (303, 0, [])
    assert job["percent"] == 100.0 and job["bytesDone"] == job["bytesTotal"]
    assert job["chunksDone"] >= 303 and job["documentsPerSecond"] > 0 and job["finishedAt"] is not None
    assert "303 documents ingested" in job["message"]

    needles = {
        "guide.md": ("ZX-5512-Q", "the ZX-5512-Q valve must be opened until water flows without bubbles"),
        "page.html": ("QT-7781-K", "the espresso machine needs descaling with citric acid when the display shows a code"),
        "warranty.pdf": ("PV-4410-M", "replace the gasket every two years to stop leaks at the tap"),
        "jl-123": ("jlq123x", "Inventory note 123 of jl: crate 123 sits in aisle 4"),
    }
    for doc_id, (code, meaning) in needles.items():
        assert hits(jobs_server, name, code, "KEYWORD")[:1] == [doc_id], code
        assert doc_id in hits(jobs_server, name, meaning, "SEMANTIC"), meaning
    assert hits(jobs_server, name, "scriptzebra", "KEYWORD") == []
    assert hits(jobs_server, name, "stylezebra", "KEYWORD") == []

    documents = {
        doc_id: data(
            jobs_server,
            "query($c: String!, $id: ID!) { document(collection: $c, id: $id) { text metadata } }",
            {"c": name, "id": doc_id},
        )["document"]
        for doc_id in ("guide.md", "page.html", "warranty.pdf", "jl-7")
    }
    assert documents["guide.md"]["metadata"] == {"source": "guide.md", "contentType": "text/markdown", "bytes": len(MARKDOWN), "team": "docs"}
    assert documents["guide.md"]["text"] == MARKDOWN.decode()
    assert documents["page.html"]["metadata"] == {"source": "page.html", "contentType": "text/html", "bytes": len(HTML_PAGE), "team": "docs"}
    assert "Descaling" in documents["page.html"]["text"] and "zebra" not in documents["page.html"]["text"]
    assert documents["warranty.pdf"]["metadata"] == {
        "source": "warranty.pdf", "contentType": "application/pdf", "bytes": len(pdf), "pages": 2, "team": "docs",
    }  # fmt: skip
    assert "PV-4410-M gasket" in documents["warranty.pdf"]["text"]
    assert documents["jl-7"]["metadata"] == {"team": "docs", "n": 7, "writer": "bulk"}


def test_bad_files_fail_alone_with_bad_input(jobs_server: LiveServer) -> None:
    name = f"plain-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)  # no chunking: a file longer than the model's window fails
    long_text = ("The pump manual goes on about valves and seals. " * 120).encode()
    broken = b'{"id": "ok-1", "text": "first fine line"}\nnot json at all\n{"id": "ok-2", "metadata": {}}\n[1, 2]\n'
    files = [
        ("long.txt", long_text, "text/plain"),
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
        ("short.txt", "Short note about the tap: café.".encode(), "text/plain"),
        ("mixed.jsonl", broken, "application/x-ndjson"),
    ]
    response = upload(jobs_server, name, files)
    assert response.status_code == 200, response.text
    job = wait_for_end(jobs_server, response.json()["data"]["ingestFiles"]["id"])
    assert job["state"] == "SUCCEEDED" and job["documentsTotal"] == 7
    assert (job["documentsDone"], job["documentsFailed"]) == (2, 5)
    errors = {e["index"]: e for e in job["errors"]}
    assert sorted(errors) == [0, 1, 4, 5, 6]
    assert {e["code"] for e in job["errors"]} == {"BAD_INPUT"}
    assert errors[0]["id"] == "long.txt" and "chunking" in errors[0]["message"]
    assert errors[1]["id"] == "image.png" and "binary" in errors[1]["message"]
    assert "not JSON" in errors[4]["message"] and errors[5]["id"] == "ok-2" and "text" in errors[5]["message"]
    assert "JSON object" in errors[6]["message"]
    stored = data(jobs_server, f'{{ documents(collection: "{name}", first: 10) {{ items {{ id }} }} }}')["documents"]["items"]
    assert sorted(d["id"] for d in stored) == ["ok-1", "short.txt"]


def test_uploads_need_a_preflight_header_and_fit_the_limit(jobs_server: LiveServer) -> None:
    name = f"limits-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    refused = upload(jobs_server, name, [("a.txt", b"hello", "text/plain")], headers={})
    assert refused.status_code == 400 and codes(refused.json()) == ["BAD_INPUT"]
    assert "Apollo-Require-Preflight" in refused.json()["errors"][0]["message"]

    too_big = upload(jobs_server, name, [("big.txt", b"x" * (3 << 20), "text/plain")])
    assert too_big.status_code == 413 and codes(too_big.json()) == ["BAD_INPUT"]
    assert "CITADEL_LIMITS__MAX_UPLOAD_BYTES" in too_big.json()["errors"][0]["message"]

    no_key = upload(jobs_server, name, [("a.txt", b"hello", "text/plain")], key="ctd_not-a-key")
    assert no_key.status_code == 401  # refused before the body is read

    as_json = graphql(jobs_server, 'mutation { ingestFiles(collection: "%s", files: ["not a file"]) { id } }' % name)
    assert codes(as_json) == ["BAD_INPUT"] and "multipart" in as_json["errors"][0]["message"]

    missing = upload(jobs_server, "no-such-collection", [("a.txt", b"hello", "text/plain")])
    assert codes(missing.json()) == ["NOT_FOUND"]
    assert data(jobs_server, f'{{ jobs(collection: "{name}") {{ id }} }}')["jobs"] == []


# -- startIngestJob, jobProgress, cancelJob --------------------------------------------------


def start_job(server: LiveServer, collection: str, documents: list[dict], key: str = ADMIN_KEY) -> dict[str, Any]:
    return graphql(
        server,
        f"mutation($c: String!, $d: [DocumentInput!]!) {{ startIngestJob(collection: $c, documents: $d) {{ {JOB_FIELDS} }} }}",
        {"c": collection, "d": documents},
        key,
    )


def documents(prefix: str, count: int, writer: str = "job") -> list[dict]:
    return [json.loads(line) for line in lines(prefix, count, writer).decode().splitlines()]


async def test_job_progress_streams_the_current_state_then_every_change(jobs_server: LiveServer) -> None:
    name = f"progress-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    started = start_job(jobs_server, name, documents("pg", 300))["data"]["startIngestJob"]
    transport = WebsocketsTransport(
        url=jobs_server.ws_url, subprotocols=["graphql-transport-ws"], init_payload={"Authorization": f"Bearer {ADMIN_KEY}"}
    )
    events = []
    async with Client(transport=transport) as session:
        subscription = gql("subscription($id: ID!) { jobProgress(id: $id) { id state documentsDone documentsFailed chunksDone bytesDone percent } }")
        subscription.variable_values = {"id": started["id"]}
        async for event in session.subscribe(subscription):
            events.append(event["jobProgress"])
    assert len(events) >= 3, events  # the state then, changes, the final state (the stream ends with it)
    assert events[0]["state"] in ("QUEUED", "RUNNING")
    assert events[-1]["state"] == "SUCCEEDED" and events[-1]["documentsDone"] == 300 and events[-1]["percent"] == 100.0
    for before, after in zip(events, events[1:]):
        for field in ("documentsDone", "documentsFailed", "chunksDone", "bytesDone"):
            assert after[field] >= before[field], (field, before, after)
    assert {e["id"] for e in events} == {started["id"]}


def test_a_cancelled_job_stops(jobs_server: LiveServer) -> None:
    name = f"cancel-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    started = start_job(jobs_server, name, documents("cx", 3_000))["data"]["startIngestJob"]
    poll(lambda: job_of(jobs_server, started["id"])["documentsDone"] >= BATCH, "the job commits a batch")
    # The model's fair queue serves an interactive call beside the job: answered while it still runs.
    embedded = data(jobs_server, '{ embed(texts: ["is the model free for me?"]) { dimensions } }')
    assert embedded["embed"]["dimensions"] == 384
    assert job_of(jobs_server, started["id"])["state"] == "RUNNING"
    cancelled = data(jobs_server, f"mutation($id: ID!) {{ cancelJob(id: $id) {{ {JOB_FIELDS} }} }}", {"id": started["id"]})["cancelJob"]
    assert cancelled["state"] == "CANCELLED" and cancelled["finishedAt"] is not None and "cancelled by" in cancelled["message"]
    done_then = cancelled["documentsDone"]
    assert done_then < 3_000

    # Another job on the same replica runs to its end meanwhile: the cancelled one did not go on.
    other = f"after-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, other)
    assert wait_for_end(jobs_server, start_job(jobs_server, other, documents("ay", 3 * BATCH))["data"]["startIngestJob"]["id"])["state"] == "SUCCEEDED"
    job = job_of(jobs_server, started["id"])
    assert job["state"] == "CANCELLED" and job["documentsDone"] == done_then
    stored = data(jobs_server, f'{{ collection(name: "{name}") {{ documentCount }} }}')["collection"]["documentCount"]
    assert done_then <= stored <= done_then + BATCHES_IN_FLIGHT * BATCH  # at most the batches in flight when it was cancelled

    again = data(jobs_server, f"mutation($id: ID!) {{ cancelJob(id: $id) {{ state }} }}", {"id": started["id"]})
    assert again["cancelJob"]["state"] == "CANCELLED"
    listed = data(jobs_server, f'{{ jobs(collection: "{name}", state: CANCELLED) {{ id }} }}')["jobs"]
    assert [j["id"] for j in listed] == [started["id"]]


def test_access_to_jobs_follows_the_keys_scopes_and_collections(jobs_server: LiveServer) -> None:
    mine, theirs = f"mine-{uuid.uuid4().hex[:6]}", f"theirs-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, mine)
    create_collection(jobs_server, theirs)

    def key(name: str, scopes: list[str], collections: list[str] | None) -> str:
        body = data(
            jobs_server,
            "mutation($i: ApiKeyInput!) { createApiKey(input: $i) { secret } }",
            {"i": {"name": name, "scopes": scopes, "collections": collections}},
        )
        return body["createApiKey"]["secret"]

    reader = key("reader", ["READ"], [mine])
    writer_elsewhere = key("writer-theirs", ["WRITE"], [theirs])
    writer = key("writer-mine", ["WRITE"], [mine])

    assert codes(start_job(jobs_server, mine, documents("ac", 2), reader)) == ["FORBIDDEN"]
    assert codes(start_job(jobs_server, mine, documents("ac", 2), writer_elsewhere)) == ["FORBIDDEN"]
    refused = upload(jobs_server, mine, [("a.txt", b"hello", "text/plain")], key=writer_elsewhere)
    assert codes(refused.json()) == ["FORBIDDEN"]
    assert data(jobs_server, f'{{ jobs(collection: "{mine}") {{ id }} }}')["jobs"] == []  # nothing was started

    started = start_job(jobs_server, mine, documents("ac", 2), writer)["data"]["startIngestJob"]
    assert wait_for_end(jobs_server, started["id"])["state"] == "SUCCEEDED"
    assert data(jobs_server, "{ jobs { id } }", key=reader)["jobs"] == [{"id": started["id"]}]
    assert data(jobs_server, f'{{ job(id: "{started["id"]}") {{ id }} }}', key=reader)["job"] == {"id": started["id"]}
    assert data(jobs_server, f'{{ job(id: "{started["id"]}") {{ id }} }}', key=writer_elsewhere)["job"] is None
    assert data(jobs_server, "{ jobs { id } }", key=writer_elsewhere)["jobs"] == []
    assert codes(graphql(jobs_server, f'{{ jobs(collection: "{mine}") {{ id }} }}', key=writer_elsewhere)) == ["FORBIDDEN"]
    cancel = f'mutation {{ cancelJob(id: "{started["id"]}") {{ state }} }}'
    assert codes(graphql(jobs_server, cancel, key=reader)) == ["FORBIDDEN"]
    assert codes(graphql(jobs_server, cancel, key=writer_elsewhere)) == ["NOT_FOUND"]
    assert codes(graphql(jobs_server, cancel, key=writer)) == ["BAD_INPUT"]  # it has ended already
    assert codes(graphql(jobs_server, '{ job(id: "not-a-uuid") { id } }')) == []


# -- kill -9 ---------------------------------------------------------------------------------


def test_a_job_resumes_after_kill_9_and_stores_each_document_once(tmp_path: Path) -> None:
    total = 600
    with temporary_database_sync("citadel_jobs_kill") as url:
        server = bundled_server(
            tmp_path / "data",
            url,
            "e2e-jobs-kill.log",
            CITADEL_REPLICA_ID="jobs-kill",
            CITADEL_AUTH__REQUIRED="true",
            CITADEL_AUTH__ADMIN_KEY=ADMIN_KEY,
            CITADEL_INGEST__JOB_BATCH_DOCUMENTS=str(BATCH),
        )
        server.start()
        try:
            create_collection(server, "resume")
            bulk = lines("kr", total)
            response = upload(server, "resume", [("bulk.jsonl", bulk, "application/x-ndjson")])
            assert response.status_code == 200, response.text
            job_id = response.json()["data"]["ingestFiles"]["id"]
            poll(lambda: job_of(server, job_id)["documentsDone"] >= 4 * BATCH, "the job is under way")
            server.process.kill()  # SIGKILL: no shutdown of any kind
            server.process.wait()
            before = job_of_database(url, job_id)
            assert before["state"] == "RUNNING" and 4 * BATCH <= before["documents_done"] < total
            assert list((tmp_path / "data" / "jobs" / job_id).iterdir())  # its file waits for the restart

            server.start()
            resumed_from = before["documents_done"]
            poll(lambda: job_of(server, job_id)["documentsDone"] >= resumed_from + 2 * BATCH, "the resumed job goes on")
            assert server.stop() == 0  # Ctrl-C mid-job: a clean stop, the job left RUNNING to resume
            assert job_of_database(url, job_id)["state"] == "RUNNING"
            assert "Traceback" not in server.log_path.read_text(errors="replace")

            server.start()
            job = wait_for_end(server, job_id)
            assert job["state"] == "SUCCEEDED", job
            assert (job["documentsDone"], job["documentsFailed"], job["documentsTotal"]) == (total, 0, total)
            assert job["bytesDone"] == len(bulk) and job["replica"] == "jobs-kill"
            assert asyncio.run(count_rows(url, "resume")) == (total, total)
            points = data(server, '{ collection(name: "resume") { documentCount vectorIndex { points } } }')["collection"]
            assert points == {"documentCount": total, "vectorIndex": {"points": total}}
            assert hits(server, "resume", "krq599x", "KEYWORD")[:1] == ["kr-599"]
            assert not (tmp_path / "data" / "jobs" / job_id).exists()  # removed once it ended
        finally:
            server.stop()



def test_a_replica_that_takes_the_place_of_a_killed_one_takes_over_its_job(tmp_path: Path) -> None:
    """Replica "first" is killed mid-job and never comes back; "second" starts on the same data
    dir (a rescheduled pod on the same volume: the job's file is there) and database under a new
    replica id: once "first" has been silent for three heartbeats, "second" takes the job over
    and finishes it, each document once."""
    total = 300
    with temporary_database_sync("citadel_jobs_adopt") as url:

        def replica(name: str) -> LiveServer:
            return bundled_server(
                tmp_path / "data", url, f"e2e-jobs-{name}.log",
                CITADEL_REPLICA_ID=name, CITADEL_REPLICA_HEARTBEAT_SECONDS="0.5",
                CITADEL_AUTH__REQUIRED="true", CITADEL_AUTH__ADMIN_KEY=ADMIN_KEY,
                CITADEL_INGEST__JOB_BATCH_DOCUMENTS=str(BATCH),
            )  # fmt: skip

        first = replica("first").start()
        try:
            create_collection(first, "adopted")
            response = upload(first, "adopted", [("bulk.jsonl", lines("ad", total), "application/x-ndjson")])
            assert response.status_code == 200, response.text
            job_id = response.json()["data"]["ingestFiles"]["id"]
            poll(lambda: job_of(first, job_id)["documentsDone"] >= 2 * BATCH, "the job is under way")
            first.process.kill()  # SIGKILL: its heartbeat just stops
            first.process.wait()
            assert job_of_database(url, job_id)["state"] == "RUNNING"
        finally:
            first.stop()
        second = replica("second").start()
        try:
            job = wait_for_end(second, job_id)
            assert (job["state"], job["replica"]) == ("SUCCEEDED", "second"), job
            assert (job["documentsDone"], job["documentsFailed"]) == (total, 0)
            assert asyncio.run(count_rows(url, "adopted")) == (total, total)
            assert "taken over by second" in second.log_path.read_text(errors="replace")
        finally:
            second.stop()

def job_of_database(url: str, job_id: str) -> dict[str, Any]:
    async def read() -> dict[str, Any]:
        conn = await asyncpg.connect(url)
        try:
            return dict(await conn.fetchrow("SELECT state, documents_done FROM jobs WHERE id = $1", uuid.UUID(job_id)))
        finally:
            await conn.close()

    return asyncio.run(read())


# -- the README's example --------------------------------------------------------------------


def test_the_readme_curl_upload_runs_as_written(jobs_server: LiveServer, tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Files and jobs") :]
    command = re.search(r"```bash\n(curl .*?)\n# ", section, flags=re.S).group(1)
    command = command.replace("localhost:8000", jobs_server.url, 1)
    command = command.replace("curl -s ", f"curl -s -H 'Authorization: Bearer {ADMIN_KEY}' ", 1)
    (tmp_path / "espresso-manual.pdf").write_bytes(minimal_pdf([["Descale the espresso machine every month."]]))
    (tmp_path / "faq.jsonl").write_bytes(lines("faq", 40))
    if not data(jobs_server, '{ collection(name: "manuals") { name } }')["collection"]:
        create_collection(jobs_server, "manuals", chunking=True)
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    started = json.loads(done.stdout)["data"]["ingestFiles"]
    assert started["documentsTotal"] == 41
    job = wait_for_end(jobs_server, started["id"])
    assert (job["state"], job["documentsDone"], job["documentsFailed"]) == ("SUCCEEDED", 41, 0)
    manual = data(jobs_server, '{ document(collection: "manuals", id: "espresso-manual.pdf") { metadata } }')["document"]
    assert manual["metadata"]["team"] == "support" and manual["metadata"]["pages"] == 1


# -- the dashboard ---------------------------------------------------------------------------


async def test_the_dashboard_shows_a_running_job_to_its_end(jobs_server: LiveServer) -> None:
    from tests.support.browser import launch_chromium, offline_page

    name = f"dash-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    async with launch_chromium() as chromium, offline_page(chromium) as (page, watch):
        await page.add_init_script(f"sessionStorage.setItem('citadel-api-key', {json.dumps(ADMIN_KEY)})")
        await page.goto(jobs_server.url + "/dashboard")
        await page.locator("#connection[data-state=connected]").wait_for(timeout=30_000)
        started = start_job(jobs_server, name, documents("db", 200))["data"]["startIngestJob"]
        card = page.locator(f'article.job[data-job="{started["id"]}"]')
        await card.wait_for(timeout=30_000)  # the subscription brought it: it was not there at load
        await page.locator(f'article.job[data-job="{started["id"]}"][data-state="SUCCEEDED"]').wait_for(timeout=120_000)
        text = await card.inner_text()
        assert name in text and "200 of 200 (100.0%)" in text and "jobs-a" in text
        assert await card.get_by_role("progressbar").get_attribute("aria-valuenow") == "100"
        assert watch.off_host() == [] and watch.errors == []


def test_malformed_multipart_requests_get_coded_400s(jobs_server: LiveServer) -> None:
    name = f"hostile-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    ops = json.dumps({
        "query": "mutation($f: [Upload!]!) { ingestFiles(collection: \"%s\", files: $f) { id } }" % name,
        "variables": {"f": [None]},
    })  # fmt: skip
    cases = {
        "map is not JSON": {"operations": ops, "map": "{not json"},
        "operations is not JSON": {"operations": "{nope", "map": '{"0": ["variables.f.0"]}'},
        "map names a path that is not there": {"operations": ops, "map": '{"0": ["variables.nothing.here"]}'},
        "a file without its map entry": {"operations": ops, "map": "{}"},
    }
    headers = {"Authorization": f"Bearer {ADMIN_KEY}", **PREFLIGHT}
    for case, fields in cases.items():
        response = httpx.post(
            jobs_server.url + "/graphql", data=fields, files=[("0", ("a.txt", b"hello", "text/plain"))], headers=headers, timeout=60
        )
        assert response.status_code in (200, 400), (case, response.status_code, response.text)
        assert codes(response.json()) and "INTERNAL" not in codes(response.json()), (case, response.text)
    garbage = httpx.post(
        jobs_server.url + "/graphql",
        content=b"--x\r\nnot a part at all",
        headers={**headers, "content-type": "multipart/form-data; boundary=x"},
        timeout=60,
    )
    assert garbage.status_code == 400 and codes(garbage.json()) == ["BAD_INPUT"], garbage.text
    assert data(jobs_server, f'{{ jobs(collection: "{name}") {{ id }} }}')["jobs"] == []
    assert "Traceback" not in jobs_server.log_path.read_text(errors="replace")


def test_a_tenant_bound_key_writes_only_its_tenant_and_sees_only_its_jobs(jobs_server: LiveServer) -> None:
    name = f"tenant-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    acme = data(
        jobs_server,
        "mutation($i: ApiKeyInput!) { createApiKey(input: $i) { secret } }",
        {"i": {"name": "acme", "scopes": ["WRITE"], "collections": [name], "filter": {"tenant": {"eq": "acme"}}}},
    )["createApiKey"]["secret"]
    admins = start_job(jobs_server, name, [{"id": "g1", "text": "Globex plans", "metadata": {"tenant": "globex"}}])
    admin_job = admins["data"]["startIngestJob"]["id"]
    assert wait_for_end(jobs_server, admin_job)["documentsDone"] == 1

    mixed = [
        {"id": "a1", "text": "Acme invoices", "metadata": {"tenant": "acme"}},
        {"id": "b1", "text": "Globex invoices", "metadata": {"tenant": "globex"}},
        {"id": "g1", "text": "Acme takes over globex's document", "metadata": {"tenant": "acme"}},
    ]
    own = start_job(jobs_server, name, mixed, key=acme)["data"]["startIngestJob"]["id"]
    job = wait_for_end(jobs_server, own)
    assert (job["state"], job["documentsDone"], job["documentsFailed"]) == ("SUCCEEDED", 1, 2)
    assert [(e["index"], e["id"], e["code"]) for e in job["errors"]] == [(1, "b1", "FORBIDDEN"), (2, "g1", "FORBIDDEN")]
    files = upload(jobs_server, name, [("memo.txt", b"An acme memo.", "text/plain")], metadata={"tenant": "acme"}, key=acme)
    assert wait_for_end(jobs_server, files.json()["data"]["ingestFiles"]["id"])["documentsDone"] == 1

    seen = {j["id"] for j in data(jobs_server, f'{{ jobs(collection: "{name}") {{ id }} }}', key=acme)["jobs"]}
    assert own in seen and admin_job not in seen
    assert data(jobs_server, f'{{ job(id: "{admin_job}") {{ id }} }}', key=acme)["job"] is None
    assert codes(graphql(jobs_server, f'mutation {{ cancelJob(id: "{admin_job}") {{ id }} }}', key=acme)) == ["NOT_FOUND"]
    text = data(jobs_server, f'{{ document(collection: "{name}", id: "g1") {{ text }} }}')["document"]["text"]
    assert text == "Globex plans"


def test_metadata_id_names_the_document_of_one_file(jobs_server: LiveServer) -> None:
    name = f"named-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    response = upload(jobs_server, name, [("report.md", b"# Q3\n\nSales rose.", "text/markdown")], metadata={"id": "q3-report"})
    assert wait_for_end(jobs_server, response.json()["data"]["ingestFiles"]["id"])["documentsDone"] == 1
    document = data(jobs_server, f'{{ document(collection: "{name}", id: "q3-report") {{ metadata }} }}')["document"]
    assert document["metadata"]["source"] == "report.md" and "id" not in document["metadata"]
    two = upload(jobs_server, name, [("a.txt", b"a", "text/plain"), ("b.txt", b"b", "text/plain")], metadata={"id": "x"})
    assert codes(two.json()) == ["BAD_INPUT"] and "one file" in two.json()["errors"][0]["message"]


def test_revoking_the_key_stops_its_jobs(jobs_server: LiveServer) -> None:
    name = f"revoked-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    created = data(
        jobs_server,
        "mutation($i: ApiKeyInput!) { createApiKey(input: $i) { secret key { id } } }",
        {"i": {"name": "soon-revoked", "scopes": ["WRITE"], "collections": [name]}},
    )["createApiKey"]
    started = start_job(jobs_server, name, documents("rv", 3_000), key=created["secret"])["data"]["startIngestJob"]
    poll(lambda: job_of(jobs_server, started["id"])["documentsDone"] >= BATCH, "the job commits a batch")
    assert data(jobs_server, f'mutation {{ revokeApiKey(id: "{created["key"]["id"]}") }}')["revokeApiKey"] is True
    job = wait_for_end(jobs_server, started["id"])
    assert job["state"] == "FAILED" and "revoked" in job["message"] and job["documentsDone"] < 3_000


def test_the_readme_apollo_upload_client_snippet_runs_in_node(jobs_server: LiveServer, tmp_path: Path) -> None:
    """The README's Apollo Client snippet, as written but for the address, the key and the files
    (a browser's <input> becomes File objects), with the npm packages it names, in Node."""
    npm_install(tmp_path, "@apollo/client@4", "graphql@16", "rxjs@7", "apollo-upload-client@20", what="the JavaScript client")
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Files and jobs") :]
    snippet = re.search(r"```js\n(.*?)```", section, flags=re.S).group(1)
    replaced = {
        "http://127.0.0.1:8000/graphql": jobs_server.url + "/graphql",
        "Bearer ctd_...": f"Bearer {ADMIN_KEY}",
        '[...document.querySelector("input[type=file]").files]': (
            '[new File(["# Grinder\\n\\nClean the burrs of the GR-2210 grinder weekly."], "grinder.md", { type: "text/markdown" }),'
            f" new File([{json.dumps(lines('apollo', 5).decode())}], \"more.jsonl\", {{ type: \"application/x-ndjson\" }})]"
        ),
    }
    for old, new in replaced.items():
        assert old in snippet, old
        snippet = snippet.replace(old, new)
    (tmp_path / "snippet.mjs").write_text(snippet + "\nconsole.log(JSON.stringify({ data, progress }));\n")
    if not data(jobs_server, '{ collection(name: "manuals") { name } }')["collection"]:
        create_collection(jobs_server, "manuals", chunking=True)
    done = subprocess.run(["node", "snippet.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["data"]["ingestFiles"]["documentsTotal"] == 6
    assert out["progress"]["job"]["state"] in ("QUEUED", "RUNNING", "SUCCEEDED")
    job = wait_for_end(jobs_server, out["data"]["ingestFiles"]["id"])
    assert (job["state"], job["documentsDone"], job["documentsFailed"]) == ("SUCCEEDED", 6, 0)
    assert hits(jobs_server, "manuals", "GR-2210", "KEYWORD")[:1] == ["grinder.md"]


def test_a_long_file_is_chunked_whole_past_the_text_limit_of_one_document(jobs_server: LiveServer) -> None:
    name = f"long-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name, chunking=True)
    paragraphs = [f"Section {i}. The maintenance log records routine checks of pump {i} and its seals." for i in range(700)]
    paragraphs.append("Appendix. The last page names the spare part KW-9931-Z for the outlet valve.")
    text = "\n\n".join(paragraphs).encode()
    assert len(text) > 2 * 20_000  # past CITADEL_LIMITS__MAX_TEXT_CHARS, the limit of one ingested document
    response = upload(jobs_server, name, [("log.txt", text, "text/plain")])
    job = wait_for_end(jobs_server, response.json()["data"]["ingestFiles"]["id"])
    assert (job["state"], job["documentsDone"], job["documentsFailed"]) == ("SUCCEEDED", 1, 0), job
    assert job["chunksDone"] > 50  # one vector point per chunk of 96 tokens
    assert hits(jobs_server, name, "KW-9931-Z", "KEYWORD") == ["log.txt"]  # its last chunk was indexed
    stored = data(jobs_server, f'{{ document(collection: "{name}", id: "log.txt") {{ text }} }}')["document"]["text"]
    assert stored == text.decode()


def test_reindex_collection_moves_a_collection_to_a_new_chunking_and_needs_admin(jobs_server: LiveServer) -> None:
    """reindexCollection over GraphQL: the bundled model again, now chunked; a WRITE key is refused."""
    name = f"reindex-{uuid.uuid4().hex[:6]}"
    create_collection(jobs_server, name)
    ingested = wait_for_end(jobs_server, start_job(jobs_server, name, documents("rx", 60))["data"]["startIngestJob"]["id"])
    assert ingested["state"] == "SUCCEEDED"
    model = data(jobs_server, f'{{ collection(name: "{name}") {{ model }} }}')["collection"]["model"]
    before = hits(jobs_server, name, "crate 7 sits in aisle 7", "SEMANTIC")
    writer = data(
        jobs_server,
        "mutation($i: ApiKeyInput!) { createApiKey(input: $i) { secret } }",
        {"i": {"name": "reindex-writer", "scopes": ["WRITE"], "collections": [name]}},
    )["createApiKey"]["secret"]
    mutation = "mutation($n: String!, $m: String!, $c: ChunkingInput) { reindexCollection(name: $n, model: $m, chunking: $c) { id kind state documentsTotal } }"
    variables = {"n": name, "m": model, "c": {"maxTokens": 16, "overlapTokens": 4}}
    assert codes(graphql(jobs_server, mutation, variables, key=writer)) == ["FORBIDDEN"]
    assert codes(graphql(jobs_server, mutation, {**variables, "m": "no/such-model"})) == ["NOT_FOUND"]
    started = data(jobs_server, mutation, variables)["reindexCollection"]
    assert started["kind"] == "REINDEX" and started["documentsTotal"] == 60
    assert codes(graphql(jobs_server, mutation, variables)) == ["CONFLICT"]  # one reindex of a collection at a time
    ended = wait_for_end(jobs_server, started["id"])
    assert ended["state"] == "SUCCEEDED" and ended["documentsDone"] == 60 and ended["chunksDone"] > 60, ended
    after = data(jobs_server, f'{{ collection(name: "{name}") {{ model chunking {{ maxTokens overlapTokens }} }} }}')["collection"]
    assert after == {"model": model, "chunking": {"maxTokens": 16, "overlapTokens": 4}}
    assert before[0] == "rx-7" and "rx-7" in hits(jobs_server, name, "crate 7 sits in aisle 7", "SEMANTIC")
