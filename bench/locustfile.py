"""Locust users for any Citadel deployment: GraphQL embed, search and ingest.

    locust -f bench/locustfile.py --host http://127.0.0.1:8000            # web UI on :8089
    locust -f bench/locustfile.py --host URL --headless -u 64 -r 16 -t 1m  # headless

A GraphQL error (HTTP 200 with `errors`) counts as a failure, named by its extensions.code.
Environment: CITADEL_LOCUST_COLLECTION (default "locust", created on first use),
CITADEL_LOCUST_TOKEN (sent as `Authorization: Bearer`, for deployments with API keys).
"""

from __future__ import annotations

import itertools
import os
import random
import uuid
from typing import Any

from locust import HttpUser, between, task

COLLECTION = os.environ.get("CITADEL_LOCUST_COLLECTION", "locust")
TOKEN = os.environ.get("CITADEL_LOCUST_TOKEN")
WORDS = (
    "river stone quiet market garden engine winter signal harbor lantern copper orbit meadow "
    "thunder velvet canyon ember glacier compass orchard"
).split()
TOPICS = ("cooking", "bikes", "music", "travel")

EMBED = "query Embed($t: [String!]!) { embed(texts: $t) { dimensions embeddings { index vectorBase64 cached } } }"
SEARCH = """query Search($c: String!, $q: String!, $f: JSON) {
  search(collection: $c, query: $q, limit: 10, filter: $f) { tookMs hits { id score } } }"""
INGEST = """mutation Ingest($c: String!, $d: [DocumentInput!]!) {
  ingest(collection: $c, documents: $d) { inserted updated unchanged failed } }"""
CREATE = """mutation Create($c: String!) { createCollection(name: $c, indexedFields: ["topic"]) { name } }"""
_ids = itertools.count()


def sentence(rng: random.Random, words: int = 8) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


class GraphQLUser(HttpUser):
    abstract = True
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        self.rng = random.Random()
        if TOKEN:
            self.client.headers["authorization"] = f"Bearer {TOKEN}"
        self.client.headers["content-type"] = "application/json"

    def graphql(self, name: str, query: str, variables: dict[str, Any]) -> dict[str, Any] | None:
        with self.client.post("/graphql", json={"query": query, "variables": variables}, name=name, catch_response=True) as response:
            try:
                body = response.json()
            except ValueError:
                response.failure(f"HTTP {response.status_code}: not JSON")
                return None
            if body.get("errors"):
                error = body["errors"][0]
                response.failure(f"{(error.get('extensions') or {}).get('code', '?')}: {error.get('message')}")
                return None
            if response.status_code != 200:
                response.failure(f"HTTP {response.status_code}")
                return None
            response.success()
            return body["data"]

    def ensure_collection(self) -> None:
        with self.client.post(
            "/graphql", json={"query": CREATE, "variables": {"c": COLLECTION}}, name="createCollection", catch_response=True
        ) as response:
            errors = response.json().get("errors") or []
            # Another user may have created it first: CONFLICT is fine here.
            if errors and (errors[0].get("extensions") or {}).get("code") != "CONFLICT":
                response.failure(errors[0].get("message"))
            else:
                response.success()


class EmbedUser(GraphQLUser):
    weight = 3

    @task(3)
    def embed_one_hot(self) -> None:
        # A small vocabulary of short texts: mostly cache hits after warm-up.
        self.graphql("embed (1 text, hot)", EMBED, {"t": [sentence(random.Random(self.rng.randrange(200)), 6)]})

    @task(1)
    def embed_batch_cold(self) -> None:
        self.graphql("embed (16 texts, cold)", EMBED, {"t": [f"{sentence(self.rng)} {uuid.uuid4().hex[:8]}" for _ in range(16)]})


class SearchUser(GraphQLUser):
    weight = 2

    def on_start(self) -> None:
        super().on_start()
        self.ensure_collection()

    @task(2)
    def search(self) -> None:
        self.graphql("search", SEARCH, {"c": COLLECTION, "q": sentence(self.rng, 5), "f": None})

    @task(1)
    def search_filtered(self) -> None:
        self.graphql("search (filter)", SEARCH, {"c": COLLECTION, "q": sentence(self.rng, 5), "f": {"topic": {"eq": self.rng.choice(TOPICS)}}})


class IngestUser(GraphQLUser):
    weight = 1

    def on_start(self) -> None:
        super().on_start()
        self.ensure_collection()

    @task
    def ingest(self) -> None:
        prefix = uuid.uuid4().hex[:8]
        documents = [
            {"id": f"{prefix}-{next(_ids)}", "text": sentence(self.rng, 12), "metadata": {"topic": self.rng.choice(TOPICS)}}
            for _ in range(20)
        ]
        self.graphql("ingest (20 docs)", INGEST, {"c": COLLECTION, "d": documents})
