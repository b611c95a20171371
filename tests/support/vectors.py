"""Test helpers for the vector store layer: store factories, exact neighbours, data generators."""

from __future__ import annotations

import os
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import numpy as np
from hypothesis import strategies as st

from app.adapters.qdrant_edge import QdrantEdgeStore
from app.adapters.qdrant_server import QdrantServerStore
from app.domain.vectors import VectorPoint

QDRANT_URL_ENV = "CITADEL_TEST_QDRANT_URL"
STORE_KINDS = ("edge", "local", "server")
EXACT_KINDS = {"edge", "local"}  # the real server searches HNSW (exact only below its full-scan threshold)


def server_skip_reason() -> str | None:
    if os.environ.get(QDRANT_URL_ENV):
        return None
    return f"no Qdrant server: set {QDRANT_URL_ENV}=http://host:6333 to run the contract suite against one"


@asynccontextmanager
async def open_store(kind: str, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh store of one kind; collections are per-test names, so a shared server stays clean."""
    if kind == "edge":
        store: Any = QdrantEdgeStore(tmp_path / "qdrant")
    elif kind == "local":
        from qdrant_client import AsyncQdrantClient

        store = QdrantServerStore(client=AsyncQdrantClient(location=":memory:"))
    elif kind == "server":
        store = QdrantServerStore(os.environ[QDRANT_URL_ENV], os.environ.get("CITADEL_TEST_QDRANT_API_KEY"))
    else:
        raise ValueError(kind)
    try:
        yield store
    finally:
        await store.close()


def collection_name() -> str:
    return f"citadel-test-{uuid.uuid4().hex[:12]}"


def point_id(i: int | str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"citadel-test/{i}"))


def random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def make_points(vectors: np.ndarray, metadata: list[dict[str, Any]] | None = None) -> list[VectorPoint]:
    return [
        VectorPoint(
            id=point_id(i),
            vector=vectors[i].tolist(),
            payload={"doc_id": f"doc-{i}", "metadata": metadata[i] if metadata else {"i": i}},
        )
        for i in range(len(vectors))
    ]


def exact_scores(corpus: np.ndarray, query: np.ndarray, distance: str) -> np.ndarray:
    """Qdrant's score per corpus row: cosine similarity, dot product, or euclidean distance."""
    c = corpus.astype(np.float64)
    q = query.astype(np.float64)
    if distance == "cosine":
        return (c / np.linalg.norm(c, axis=1, keepdims=True)) @ (q / np.linalg.norm(q))
    if distance == "dot":
        return c @ q
    return np.linalg.norm(c - q, axis=1)


def exact_ranking(scores: np.ndarray, distance: str) -> np.ndarray:
    """Row indices best first (euclid: smallest distance first)."""
    return np.argsort(scores if distance == "euclid" else -scores, kind="stable")


# -- random metadata and filters for the filter contract ------------------------------------------

# Strings Qdrant does and does not read as datetimes, in the formats it accepts.
PAYLOAD_DATETIMES = (
    "2024-01-01T00:00:00Z",
    "2024-01-01T12:30:00+02:00",
    "2024-01-01T10:00:00.250000Z",
    "2024-01-01 10:00",
    "2023-12-31T23:59:59",
    "2024-01-02",
)
BOUND_DATETIMES = (
    "2024-01-01T00:00:00Z",
    "2024-01-01T10:00:00+00:00",
    "2024-01-01T10:00:00.250000",
    "2024-01-01",
    "2024-01-02T00:00:00+01:00",
)
WORDS = ("a", "b", "c", "1")
TOP_KEYS = ("s", "n", "t", "x", "y")
FIELDS = ("s", "n", "t", "x", "y", "x.y", "y.x", "x.x", "s.x", "x.y.x")

scalar_values = st.one_of(
    st.sampled_from(WORDS),
    st.integers(-3, 3),
    st.sampled_from([-1.5, 0.0, 1.0, 2.5]),
    st.booleans(),
    st.none(),
    st.sampled_from(PAYLOAD_DATETIMES + ("not-a-date",)),
)
leaf_values = st.one_of(scalar_values, st.lists(scalar_values, max_size=3))
metadata_values = st.recursive(
    leaf_values,
    lambda children: st.one_of(
        st.dictionaries(st.sampled_from(("x", "y")), children, max_size=2),
        st.lists(st.dictionaries(st.sampled_from(("x", "y")), children, max_size=2), min_size=1, max_size=2),
    ),
    max_leaves=4,
)
metadata_dicts = st.dictionaries(st.sampled_from(TOP_KEYS), metadata_values, max_size=4)

_match_values = st.one_of(st.sampled_from(WORDS), st.integers(-3, 3), st.booleans())
_match_lists = st.one_of(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=3),
    st.lists(st.integers(-3, 3), min_size=1, max_size=3),
)


@st.composite
def _range_ops(draw: st.DrawFn) -> dict[str, Any]:
    ops = draw(st.lists(st.sampled_from(("gt", "gte", "lt", "lte")), min_size=1, max_size=2, unique=True))
    if draw(st.booleans()):
        bounds = st.one_of(st.integers(-3, 3), st.sampled_from([-1.5, 0.5, 1.0, 2.5]))
    else:
        bounds = st.sampled_from(BOUND_DATETIMES)
    return {op: draw(bounds) for op in ops}


@st.composite
def _field_ops(draw: st.DrawFn) -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for op in draw(st.lists(st.sampled_from(("eq", "ne", "in", "nin", "range", "exists")), min_size=1, max_size=2, unique=True)):
        if op in ("eq", "ne"):
            ops[op] = draw(_match_values)
        elif op in ("in", "nin"):
            ops[op] = draw(_match_lists)
        elif op == "exists":
            ops[op] = draw(st.booleans())
        else:
            ops.update(draw(_range_ops()))
    return ops


field_filters = st.dictionaries(st.sampled_from(FIELDS), _field_ops(), min_size=1, max_size=2)
raw_filters = st.recursive(
    field_filters,
    lambda children: st.one_of(
        st.builds(lambda items: {"and": items}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda items: {"or": items}, st.lists(children, min_size=1, max_size=3)),
        st.builds(lambda item: {"not": item}, children),
    ),
    max_leaves=5,
)
