"""Documents that bring their own vector (DocumentInput.vector / vectorBase64), on the real stack."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.errors import DependencyUnavailable
from tests.support.stack import (
    STORE_KINDS,
    Stack,
    forward_passes,
    model_runtime,  # noqa: F401  (session fixture)
    open_stack,
    pg_state,
)

DIMS = 384


@pytest.fixture(params=STORE_KINDS)
async def stack(request, model_runtime, tmp_path: Path) -> Any:  # noqa: F811
    async with open_stack(model_runtime, request.param, tmp_path, embed_batch=50) as opened:
        yield opened


def unit_vectors(count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, DIMS)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


async def test_own_vectors_are_stored_as_given_without_a_forward_pass(stack: Stack) -> None:
    await stack.collections.create("own")
    vectors = unit_vectors(60, seed=1)
    docs = [
        {"id": f"v{i}", "text": f"document {i}", "metadata": {"n": i}, "vector": vectors[i].tolist()}
        for i in range(30)
    ] + [
        {"id": f"v{i}", "text": f"document {i}", "vector_base64": base64.b64encode(vectors[i].astype("<f4").tobytes()).decode()}
        for i in range(30, 60)
    ]
    passes = forward_passes()
    report = await stack.ingest.ingest("own", docs)
    assert (report.inserted, report.failed) == (60, 0)
    assert forward_passes() == passes  # the model never ran
    for i in (0, 45):  # one of each form: its own vector finds it first, with cosine 1
        top = (await stack.search.search("own", vector=vectors[i].tolist(), limit=1)).hits[0]
        assert top.id == f"v{i}" and top.score == pytest.approx(1.0, abs=1e-5)
    # The same vector again is unchanged; a new vector for the same text is an update.
    again = await stack.ingest.ingest("own", [docs[0], {**docs[1], "vector": vectors[59].tolist()}])
    assert (again.unchanged, again.updated) == (1, 1)


async def test_wrong_dimensions_or_values_are_per_document_bad_input(stack: Stack) -> None:
    await stack.collections.create("bad")
    good = unit_vectors(1, seed=2)[0].tolist()
    docs = [
        {"id": "ok", "text": "fine", "vector": good},
        {"id": "short", "text": "x", "vector": good[:100]},
        {"id": "nan", "text": "x", "vector": [float("nan")] * DIMS},
        {"id": "zero", "text": "x", "vector": [0.0] * DIMS},
        {"id": "b64", "text": "x", "vector_base64": "not base64!"},
        {"id": "both", "text": "x", "vector": good, "vector_base64": base64.b64encode(b"\0" * 4 * DIMS).decode()},
    ]
    report = await stack.ingest.ingest("bad", docs)
    assert report.inserted == 1
    assert {e.id: e.code for e in report.errors} == {i: "BAD_INPUT" for i in ("short", "nan", "zero", "b64", "both")}
    assert "384" in next(e.message for e in report.errors if e.id == "short")
    assert set(await pg_state(stack, "bad")) == {"ok"}  # nothing else stored


async def test_reconciler_reindexes_own_vectors_as_given(stack: Stack) -> None:
    await stack.collections.create("later")
    vectors = unit_vectors(20, seed=3)
    docs = [{"id": f"p{i}", "text": "the same text for all", "vector": vectors[i].tolist()} for i in range(20)]
    stack.store.fail_after_points = 0
    with pytest.raises(DependencyUnavailable):
        await stack.ingest.ingest("later", docs)
    stack.store.restore()
    passes = forward_passes()
    counts = await stack.reconciler.run_once()
    assert counts.indexed == 20 and forward_passes() == passes
    top = (await stack.search.search("later", vector=vectors[7].tolist(), limit=1)).hits[0]
    assert top.id == "p7" and top.score == pytest.approx(1.0, abs=1e-5)
