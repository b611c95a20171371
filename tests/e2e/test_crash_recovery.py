"""`kill -9` of the whole process tree in the middle of an ingest, on the embedded defaults.

After a restart every acknowledged document is there and searchable, and it becomes so when the
model turns READY, not at the reconciler's next periodic round: the interval is set far beyond
the deadline, so only the READY wake-up can make the test pass.
"""

from __future__ import annotations

import signal
import threading
import time

import httpx
import psutil

from tests.e2e.conftest import ARTIFACTS, BUNDLED
from tests.support.server import LiveServer, processes_mentioning

COLLECTION = "crash"
INGEST = "mutation($d: [DocumentInput!]!) { ingest(collection: \"crash\", documents: $d) { inserted failed } }"
PAGE = (
    "query($after: String) { documents(collection: \"crash\", first: 500, after: $after) "
    "{ items { id indexed } nextCursor } }"
)
SEARCH = "query($q: String!) { search(collection: \"crash\", query: $q, limit: 3) { hits { id } } }"
BATCH = 16
ACKNOWLEDGED_BEFORE_KILL = 6  # batches
RECONCILE_INTERVAL = 600  # seconds: a periodic round cannot be what indexes the backlog
DEADLINE_AFTER_READY = 60  # seconds


def text_of(doc_id: str) -> str:
    n = int(doc_id.split("-")[1])
    return f"crash recovery document {n}: the {['red', 'green', 'blue', 'amber'][n % 4]} lantern number {n * 7919}"


class Ingester(threading.Thread):
    """Ingests batches of new documents back to back; remembers which the server acknowledged."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acknowledged: list[str] = []
        self.batches = 0
        self.stop = threading.Event()

    def run(self) -> None:
        n = 0
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                ids = [f"doc-{n + i}" for i in range(BATCH)]
                n += BATCH
                docs = [{"id": i, "text": text_of(i)} for i in ids]
                try:
                    body = client.post(self.url + "/graphql", json={"query": INGEST, "variables": {"d": docs}}).json()
                except (httpx.HTTPError, ValueError):
                    return  # the server is gone: this batch was never acknowledged
                result = (body.get("data") or {}).get("ingest")
                if result and result["inserted"] == BATCH and result["failed"] == 0:
                    self.acknowledged.extend(ids)
                    self.batches += 1


def kill_tree(server: LiveServer, data_dir) -> None:
    """SIGKILL the server and everything it started, all at once, as a power cut would."""
    procs = [psutil.Process(server.process.pid), *server.descendants(), *processes_mentioning(data_dir)]
    for proc in {p.pid: p for p in procs}.values():
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    server.process.wait(30)
    psutil.wait_procs([p for p in procs if p.is_running()], timeout=30)


def indexed_ids(server: LiveServer) -> dict[str, bool]:
    seen: dict[str, bool] = {}
    after = None
    while True:
        page = server.graphql(PAGE, {"after": after})["data"]["documents"]
        seen.update({d["id"]: d["indexed"] for d in page["items"]})
        after = page["nextCursor"]
        if not after:
            return seen


def test_kill_9_mid_ingest_loses_nothing_acknowledged_and_indexes_it_once_the_model_is_ready(tmp_path):
    data_dir = tmp_path / "data"
    env = {
        "CITADEL_DATA_DIR": str(data_dir),
        "HF_HUB_OFFLINE": "1",
        "CITADEL_DEFAULT_MODEL": BUNDLED,
        "CITADEL_INGEST__RECONCILE_INTERVAL_SECONDS": str(RECONCILE_INTERVAL),
        "CITADEL_INGEST__EMBED_BATCH": "4",  # several PostgreSQL/Qdrant steps per batch to land in
    }
    log = ARTIFACTS / "crash-recovery-server.log"
    log.unlink(missing_ok=True)
    first = LiveServer(env=env, log_path=log).start()
    created = first.graphql(f'mutation {{ createCollection(name: "{COLLECTION}") {{ name }} }}')
    assert "errors" not in created, created
    ingester = Ingester(first.url)
    ingester.start()
    deadline = time.monotonic() + 120
    while ingester.batches < ACKNOWLEDGED_BEFORE_KILL and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ingester.batches >= ACKNOWLEDGED_BEFORE_KILL, f"only {ingester.batches} batches in 120 s:\n{first.log_tail()}"
    kill_tree(first, data_dir)  # while the next batch is in flight
    ingester.stop.set()
    ingester.join(30)
    acknowledged = list(ingester.acknowledged)
    assert processes_mentioning(data_dir) == [], "kill -9 left processes behind"

    second = LiveServer(env=env, log_path=log).start()  # returns once /readyz says the model is READY
    ready_at = time.monotonic()
    try:
        pending_at_ready: int | None = None
        while True:
            stored = indexed_ids(second)
            missing = [i for i in acknowledged if i not in stored]
            assert missing == [], f"acknowledged but lost: {missing[:10]} ({len(missing)})"
            # Every stored row, the batch in flight at the kill included, ends up indexed.
            pending = [i for i, indexed in stored.items() if not indexed]
            pending_at_ready = len(pending) if pending_at_ready is None else pending_at_ready
            waited = time.monotonic() - ready_at
            if not pending:
                break
            assert waited < DEADLINE_AFTER_READY, (
                f"{len(pending)} documents still pending {waited:.0f} s after READY:\n{second.log_tail()}"
            )
            time.sleep(0.25)
        print(
            f"\n{len(acknowledged)} acknowledged of {len(stored)} stored documents; {pending_at_ready} pending "
            f"at READY, all indexed {waited:.1f} s after READY"
        )
        for doc_id in stored:  # indexed means searchable: the vector itself survived the kill
            hits = second.graphql(SEARCH, {"q": text_of(doc_id)})["data"]["search"]["hits"]
            assert doc_id in [h["id"] for h in hits], (doc_id, hits)
    finally:
        assert second.stop() == 0
    assert processes_mentioning(data_dir) == []
