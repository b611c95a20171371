"""The cross-encoder's single tokenization and unpadded forward (app/inference/backends/cross_encoder.py,
unpadded_bert.UnpaddedCrossEncoder) against sentence-transformers' own CrossEncoder, on the real
test cross-encoder (tests/support/cross_encoders.py): the same ids and token types as
CrossEncoder.preprocess, the same scores as CrossEncoder.predict on both forwards, through the
pool, and under concurrent callers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.inference.backends import load_backend, unpadded_bert
from app.inference.metrics import FORWARD_PASSES, sample_sum
from app.inference.pool import ModelPool
from app.settings import InferenceSettings, Settings
from tests.support.cross_encoders import (  # noqa: F401  (session fixtures)
    DOCUMENTS,
    QUERY,
    RERANKER,
    cross_encoder_dir,
    reference_cross_encoder,
    reranker_catalog,
)

pytestmark = pytest.mark.slow

TOLERANCE = 1e-5
LONG = " ".join(f"word{i}" for i in range(400))  # ~1200 tokens: past the 512-token window
PAIRS = [
    (QUERY, d) for d in DOCUMENTS
] + [
    ("a", "b"),
    (LONG, "a short document"),  # the query is the longer side: it is cut
    ("a short query", LONG),
    (LONG, LONG + " and more"),  # both cut, longest first
    ("mid length query " * 30, "document " * 200),
]


def settings(directory: Path, unpadded: bool = True) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        default_reranker=RERANKER,
        models=reranker_catalog(directory),
        inference=InferenceSettings(devices="cpu", unpadded=unpadded),
    )


def load(directory: Path, unpadded: bool = True) -> Any:
    config = settings(directory, unpadded)
    return load_backend(config.model(RERANKER), directory, "cpu", config.inference)


@pytest.fixture(scope="module")
def backend(cross_encoder_dir: Path):  # noqa: F811
    loaded = load(cross_encoder_dir)
    yield loaded
    loaded.close()


def predict(reference: Any, pairs: list[tuple[str, str]], raw: bool = False) -> np.ndarray:
    if raw:
        return np.asarray(reference.predict(pairs, activation_fn=torch.nn.Identity()), dtype=np.float32)
    return np.asarray(reference.predict(pairs), dtype=np.float32)


def test_pair_ids_and_token_types_equal_preprocess(backend, reference_cross_encoder) -> None:  # noqa: F811
    features = reference_cross_encoder.preprocess(PAIRS)
    ours = backend.pair_token_ids(PAIRS)
    for row, (ids, types) in enumerate(ours):
        real = features["attention_mask"][row].bool()
        assert ids == features["input_ids"][row][real].tolist(), row
        assert types == features["token_type_ids"][row][real].tolist(), row
        assert len(ids) <= backend.max_seq_length
    assert max(len(ids) for ids, _ in ours) == backend.max_seq_length == 512  # truncation was exercised
    assert any(1 in types for _, types in ours)
    assert backend.token_counts(PAIRS) == [len(ids) for ids, _ in ours]


def test_the_unpadded_forward_equals_predict(backend, reference_cross_encoder) -> None:  # noqa: F811
    assert unpadded_bert.supports_cross_encoder(reference_cross_encoder)
    assert backend.forward_kind == "unpadded"  # scripted: runs without the GIL
    logits = backend.encode_ids(backend.pair_token_ids(PAIRS), False)
    assert logits.dtype == np.float32 and logits.shape == (len(PAIRS), 1)
    np.testing.assert_allclose(logits[:, 0], predict(reference_cross_encoder, PAIRS, raw=True), atol=TOLERANCE)
    np.testing.assert_allclose(
        backend.activate(logits)[:, 0], predict(reference_cross_encoder, PAIRS), atol=TOLERANCE
    )
    # A batch of one, and a pair alone scores as inside a mixed batch (no leak across packed pairs).
    for index in (0, len(DOCUMENTS) + 1):
        alone = backend.encode_ids(backend.pair_token_ids(PAIRS[index : index + 1]), False)
        np.testing.assert_allclose(alone, logits[index : index + 1], atol=1e-6)
        np.testing.assert_allclose(
            alone[:, 0], predict(reference_cross_encoder, PAIRS[index : index + 1], raw=True), atol=TOLERANCE
        )


def test_with_unpadded_off_the_padded_forward_gives_the_same_scores(
    backend, cross_encoder_dir, reference_cross_encoder  # noqa: F811
) -> None:
    padded = load(cross_encoder_dir, unpadded=False)
    try:
        assert padded.forward_kind == "padded"
        ids = padded.pair_token_ids(PAIRS)
        expected = predict(reference_cross_encoder, PAIRS, raw=True)
        np.testing.assert_allclose(padded.encode_ids(ids, False)[:, 0], expected, atol=TOLERANCE)
        np.testing.assert_allclose(padded.encode(PAIRS, False)[:, 0], expected, atol=TOLERANCE)
        np.testing.assert_allclose(backend.encode_ids(ids, False), padded.encode_ids(ids, False), atol=TOLERANCE)
    finally:
        padded.close()


@pytest.fixture(scope="module")
async def pool(cross_encoder_dir: Path):  # noqa: F811
    config = settings(cross_encoder_dir)
    models = ModelPool(config)
    await models.load(config.model(RERANKER), cross_encoder_dir)
    try:
        yield models
    finally:
        await models.close()


async def test_pool_score_equals_predict(pool, reference_cross_encoder) -> None:  # noqa: F811
    scores = await pool.score(RERANKER, PAIRS)
    np.testing.assert_allclose(scores[:, 0], predict(reference_cross_encoder, PAIRS), atol=TOLERANCE)
    raw = await pool.score(RERANKER, PAIRS[:1], raw=True)
    np.testing.assert_allclose(raw[:, 0], predict(reference_cross_encoder, PAIRS[:1], raw=True), atol=TOLERANCE)


async def test_concurrent_callers_each_get_their_own_scores(pool, reference_cross_encoder) -> None:  # noqa: F811
    # Pairs of many requests share passes (packed together): each request gets its own rows, in order.
    requests = []
    for caller in range(8):
        order = np.random.default_rng(caller).permutation(len(PAIRS))[: 3 + caller]
        requests.append([(f"caller {caller}: {PAIRS[i][0][:200]}", PAIRS[i][1]) for i in order])
    expected = [predict(reference_cross_encoder, pairs) for pairs in requests]
    before = sample_sum(FORWARD_PASSES, "citadel_forward_passes_total", model=RERANKER)
    calls = (pool.score(RERANKER, pairs, fair_key=f"k{n % 3}") for n, pairs in enumerate(requests))
    results = await asyncio.gather(*calls)
    assert sample_sum(FORWARD_PASSES, "citadel_forward_passes_total", model=RERANKER) - before < len(requests)
    for want, got in zip(expected, results, strict=True):
        assert got.shape == (len(want), 1)
        np.testing.assert_allclose(got[:, 0], want, atol=TOLERANCE)
