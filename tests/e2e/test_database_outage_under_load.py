"""PostgreSQL stopped and restarted while clients keep calling: only DEPENDENCY_UNAVAILABLE while
it is down (never INTERNAL or a 5xx), everything works afterwards without a restart, and every
acknowledged document is stored and indexed."""

from __future__ import annotations

import asyncio

import httpx

from app.adapters.embedded import EmbeddedPostgres
from tests.e2e.conftest import ARTIFACTS, BUNDLED, shared_redis_env
from tests.support.server import LiveServer

WAIT_S = 120.0  # upper bound for recovery on a loaded machine; never asserted as a duration
INGEST = "mutation($d: [DocumentInput!]!) { ingest(collection: \"load\", documents: $d) { ids } }"
READS = [
    '{ collection(name: "load") { name } }',
    '{ documents(collection: "load", first: 5) { items { id } } }',
    '{ search(collection: "load", query: "a steady stream", limit: 3) { hits { id } } }',
]


async def client(http: httpx.AsyncClient, worker: int, stop: asyncio.Event, codes: list, acked: list) -> None:
    n = 0
    while not stop.is_set():
        n += 1
        if n % 3 == 0:
            doc_id = f"w{worker}-{n}"
            body = {"query": INGEST, "variables": {"d": [{"id": doc_id, "text": f"document {doc_id} of the load"}]}}
        else:
            body, doc_id = {"query": READS[n % len(READS)]}, None
        try:
            response = await http.post("/graphql", json=body)
        except httpx.TransportError as exc:
            codes.append(f"transport:{type(exc).__name__}")
            await asyncio.sleep(0.1)
            continue
        if response.status_code >= 500:
            codes.append(f"http:{response.status_code}")
            continue
        payload = response.json()
        for error in payload.get("errors") or ():
            codes.append(error.get("extensions", {}).get("code"))
        if doc_id and not payload.get("errors"):
            acked.append(doc_id)
        await asyncio.sleep(0.02)


async def test_postgres_outage_under_load_is_dependency_unavailable_then_recovers(tmp_path):
    database = EmbeddedPostgres(tmp_path / "external-pg")
    url = database.start()
    log = ARTIFACTS / "database-outage-under-load.log"
    log.unlink(missing_ok=True)
    server = LiveServer(
        env={
            "CITADEL_DATA_DIR": str(tmp_path / "data"),
            "CITADEL_DATABASE_URL": url,
            **shared_redis_env(),
            "CITADEL_DEFAULT_MODEL": BUNDLED,
            "HF_HUB_OFFLINE": "1",
            "CITADEL_INGEST__RECONCILE_INTERVAL_SECONDS": "1",
        },
        log_path=log,
    )
    await asyncio.to_thread(server.start)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            created = (await http.post("/graphql", json={"query": 'mutation { createCollection(name: "load") { name } }'})).json()
            assert "errors" not in created, created
            codes: list = []
            acked: list[str] = []
            stop = asyncio.Event()
            workers = [asyncio.create_task(client(http, w, stop, codes, acked)) for w in range(6)]
            await asyncio.sleep(2)
            await asyncio.to_thread(database.stop)  # a fast shutdown: the server says goodbye mid-traffic
            await asyncio.sleep(6)
            await asyncio.to_thread(database.start)
            async with asyncio.timeout(WAIT_S):  # until requests succeed again, then a little more
                while True:
                    probe = (await http.post("/graphql", json={"query": READS[0]})).json()
                    if not probe.get("errors"):
                        break
                    await asyncio.sleep(0.5)
            await asyncio.sleep(2)
            stop.set()
            await asyncio.gather(*workers)

            assert "DEPENDENCY_UNAVAILABLE" in codes, "the outage was not seen at all"
            assert set(codes) <= {"DEPENDENCY_UNAVAILABLE"}, sorted(set(map(str, codes)))
            assert acked, "no ingest was acknowledged"
            # Nothing acknowledged is lost, and the reconciler indexes whatever was left pending.
            query = "query($id: ID!) { document(collection: \"load\", id: $id) { id indexed } }"
            async with asyncio.timeout(WAIT_S):
                missing = list(acked)
                while missing:
                    answers = [
                        (await http.post("/graphql", json={"query": query, "variables": {"id": i}})).json()
                        for i in missing
                    ]
                    assert all(a["data"]["document"] is not None for a in answers), answers[:3]
                    missing = [i for i, a in zip(missing, answers) if not a["data"]["document"]["indexed"]]
                    if missing:
                        await asyncio.sleep(0.5)
    finally:
        stopped = await asyncio.to_thread(server.stop)
        await asyncio.to_thread(database.stop)
    assert stopped == 0
    text = log.read_text(errors="replace")
    assert "unhandled error" not in text, [line for line in text.splitlines() if "unhandled error" in line][:3]
    assert "Traceback" not in text, text[text.index("Traceback") - 500 : text.index("Traceback") + 1500]
