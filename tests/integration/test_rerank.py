"""Rerank on a real cross-encoder (built from the bundled MiniLM, tests/support/cross_encoders.py):
the pool's scores against CrossEncoder.predict, the service's ordering and errors, a download
through the loopback hub, and search(rerank:) over a real stack."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.adapters.events import EventBus
from app.domain.chunking import Chunking
from app.domain.models import FALLBACK_MODEL, ModelState
from app.errors import BadInput, NotFound
from app.inference.metrics import FORWARD_PASSES, sample_sum
from app.inference.pool import ModelPool
from app.services.embedding import EmbeddingService
from tests.support.local_models import LocalModels
from app.services.models import ModelManager
from app.requests import SearchRequest, SearchRerank
from app.services.rerank import RerankService
from app.settings import InferenceSettings, LimitSettings, Settings
from tests.support.cross_encoders import (  # noqa: F401  (session fixtures)
    DOCUMENTS,
    QUERY,
    RERANKER,
    cross_encoder_dir,
    reference_cross_encoder,
    reranker_catalog,
)
from tests.support.fake_hub import FakeHub, hub_settings, timeline
from tests.support.stack import model_runtime, open_stack  # noqa: F401  (session fixture)

TOLERANCE = 1e-4


def reranker_settings(directory: Path, **values: Any) -> Settings:
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        default_model=FALLBACK_MODEL,
        default_reranker=RERANKER,
        models=reranker_catalog(directory),
        inference=InferenceSettings(devices="cpu"),
        **values,
    )


@pytest.fixture(scope="module")
async def service(cross_encoder_dir: Path):  # noqa: F811
    settings = reranker_settings(cross_encoder_dir, limits=LimitSettings(max_rerank_documents=20))
    pool = ModelPool(settings)
    models = LocalModels(settings, pool)
    try:
        yield RerankService(settings, pool, models, EmbeddingService(settings, pool, None, models))
    finally:
        await pool.close()


def predicted(reference: Any, query: str, documents: list[str], raw: bool = False) -> np.ndarray:
    pairs = [(query, d) for d in documents]
    if raw:
        return reference.predict(pairs, activation_fn=torch.nn.Identity())
    return reference.predict(pairs)


async def test_scores_equal_cross_encoder_predict_best_first(service, reference_cross_encoder) -> None:  # noqa: F811
    expected = predicted(reference_cross_encoder, QUERY, DOCUMENTS)
    outcome = await service.rerank(QUERY, DOCUMENTS)
    assert outcome.model == RERANKER
    assert sorted(h.index for h in outcome.hits) == list(range(len(DOCUMENTS)))
    for hit in outcome.hits:
        assert abs(hit.score - float(expected[hit.index])) < TOLERANCE, hit
        assert hit.text == DOCUMENTS[hit.index]
    scores = [h.score for h in outcome.hits]
    assert scores == sorted(scores, reverse=True)
    assert [h.index for h in outcome.hits] == [int(i) for i in np.argsort(-expected, kind="stable")]
    assert 0.0 < min(scores) < max(scores) < 1.0  # sigmoid of one logit


async def test_top_n_and_raw_scores(service, reference_cross_encoder) -> None:  # noqa: F811
    logits = predicted(reference_cross_encoder, QUERY, DOCUMENTS, raw=True)
    outcome = await service.rerank(QUERY, DOCUMENTS, top_n=3, raw_scores=True)
    assert [h.index for h in outcome.hits] == [int(i) for i in np.argsort(-logits, kind="stable")[:3]]
    for hit in outcome.hits:
        assert abs(hit.score - float(logits[hit.index])) < TOLERANCE
    assert (await service.rerank(QUERY, DOCUMENTS[:2], top_n=10)).hits[1].index in (0, 1)  # topN past the end: all


async def reranked_search(service, stack, collection, query, rerank, **options):
    """search(rerank:) as GraphQL runs it: the request checked, the search service handing it to the reranker."""
    request = SearchRequest.parse(collection, stack.settings.limits, query=query, rerank=rerank, **options)
    return await service.search(stack.search, request)


async def test_concurrent_requests_share_forward_passes(service, reference_cross_encoder) -> None:  # noqa: F811
    queries = [f"question number {i} about descaling" for i in range(8)]
    before = sample_sum(FORWARD_PASSES, "citadel_forward_passes_total", model=RERANKER)
    outcomes = await asyncio.gather(*(service.rerank(q, DOCUMENTS) for q in queries))
    passes = sample_sum(FORWARD_PASSES, "citadel_forward_passes_total", model=RERANKER) - before
    assert 1 <= passes < len(queries)  # pairs of different requests went through the same passes
    for query, outcome in zip(queries, outcomes):
        expected = predicted(reference_cross_encoder, query, DOCUMENTS)
        assert max(abs(h.score - float(expected[h.index])) for h in outcome.hits) < TOLERANCE


@pytest.mark.parametrize(
    ("call", "code", "needle"),
    [
        ({"model": FALLBACK_MODEL}, "BAD_INPUT", "embedding model, not a reranker"),
        ({"documents": ["d"] * 21}, "BAD_INPUT", "at most 20"),
        ({"documents": []}, "BAD_INPUT", "must not be empty"),
        ({"query": "  "}, "BAD_INPUT", "query is blank"),
        ({"top_n": 0}, "BAD_INPUT", "topN"),
        ({"documents": ["ok", "bad\x00"]}, "BAD_INPUT", "document 1"),
        ({"model": "no/such-reranker"}, "NOT_FOUND", "unknown model"),
    ],
)
async def test_errors_are_coded(service, call, code, needle) -> None:
    args = {"query": QUERY, "documents": DOCUMENTS[:3], **call}
    with pytest.raises((BadInput, NotFound)) as raised:
        await service.rerank(**args)
    assert raised.value.code == code and needle in raised.value.message


async def test_a_reranker_is_not_an_embedding_model(service) -> None:
    embedder = service.embedder
    with pytest.raises(BadInput, match="is a reranker"):
        await embedder.embed(["hello"], model=RERANKER)


async def test_downloads_through_the_hub_with_progress_then_scores(
    cross_encoder_dir: Path, reference_cross_encoder, tmp_path: Path  # noqa: F811
) -> None:
    repo = "test-org/cross-encoder-from-hub"
    with FakeHub(source=cross_encoder_dir, repo_id=repo) as hub:
        hub.add_fault("drop", file="model.safetensors")  # the first attempt is cut: retried, resumed
        base = hub_settings(tmp_path, hub.url)
        catalog = {**{k: v.model_dump() for k, v in base.models.items()}, repo: {"task": "rerank", "repo_id": repo}}
        settings = Settings(  # type: ignore[call-arg]
            **{**base.model_dump(exclude={"models"}), "models": catalog, "default_reranker": repo}
        )
        pool = ModelPool(settings.model_copy(update={"inference": InferenceSettings(devices="cpu")}))
        bus = EventBus(queue_size=100_000)
        subscription = bus.subscribe()
        manager = ModelManager(settings, pool.load, bus)
        try:
            service = RerankService(settings, pool, manager, EmbeddingService(settings, pool, None, manager))
            outcome = await service.rerank(QUERY, DOCUMENTS, wait=True)
            status = manager.status(repo)
        finally:
            await manager.close()
            await pool.close()
    events = []
    while subscription.pending():
        events.append(subscription._queue.popleft())
    assert status.state is ModelState.READY and status.attempts == 2 and status.dimensions is None
    steps = timeline(events, model=repo)
    assert steps[:3] == ["QUEUED", "DOWNLOADING", "progress"] and "RETRYING" in steps and steps[-2:] == ["LOADING", "READY"]
    ticks = [e for e in events if e.model == repo and e.kind == "progress"]
    assert ticks[-1].model_bytes_done == ticks[-1].model_bytes_total == hub.size_of()
    assert any(r.range for r in hub.file_requests("model.safetensors", "GET") if r.fault is None)  # resumed
    expected = predicted(reference_cross_encoder, QUERY, DOCUMENTS)
    assert max(abs(h.score - float(expected[h.index])) for h in outcome.hits) < TOLERANCE


# -- search(rerank:) ----------------------------------------------------------------------------

CORPUS = [{"id": f"d{i}", "text": text, "metadata": {"n": i}} for i, text in enumerate(DOCUMENTS) if len(text) < 200]


@pytest.fixture
async def stack(model_runtime, tmp_path):  # noqa: F811
    async with open_stack(model_runtime, "edge", tmp_path) as s:
        yield s


async def test_search_returns_the_top_limit_of_its_candidates_by_cross_encoder(
    stack, service, reference_cross_encoder  # noqa: F811
) -> None:
    await stack.collections.create("manuals")
    report = await stack.ingest.ingest("manuals", CORPUS)
    assert report.failed == 0
    candidates = 8
    plain = await stack.search.search("manuals", query=QUERY, limit=candidates)
    assert len(plain.hits) == candidates
    reranked = await reranked_search(service, stack, "manuals", QUERY, SearchRerank(RERANKER, candidates), limit=3)
    texts = [h.text for h in plain.hits]
    expected = predicted(reference_cross_encoder, QUERY, texts)
    best = [plain.hits[int(i)].id for i in np.argsort(-expected, kind="stable")[:3]]
    assert [h.id for h in reranked.hits] == best
    by_id = {h.id: h.score for h in plain.hits}
    for hit, score in zip(reranked.hits, reranked.rerank_scores):
        assert hit.score == pytest.approx(by_id[hit.id])  # the retrieval score is kept
        assert abs(score - float(expected[texts.index(hit.text)])) < TOLERANCE
    assert reranked.rerank_scores == sorted(reranked.rerank_scores, reverse=True)
    page = await reranked_search(service, stack, "manuals", QUERY, SearchRerank(RERANKER, candidates), limit=2, offset=1)
    assert [h.id for h in page.hits] == best[1:3]
    with pytest.raises(BadInput, match="text query"):
        await reranked_search(service, stack, "manuals", None, SearchRerank(), vector=[0.1] * 384)
    with pytest.raises(BadInput, match="candidates"):
        await reranked_search(service, stack, "manuals", QUERY, SearchRerank(RERANKER, 0))


async def test_search_of_a_chunked_collection_scores_the_best_chunk(
    stack, service, reference_cross_encoder  # noqa: F811
) -> None:
    await stack.collections.create("chunked", chunking=Chunking(12, 0))
    documents = [
        {"id": "long", "text": "Stock markets fell on Tuesday. " * 6 + "Descaling removes limescale from the espresso machine."},
        {"id": "short", "text": "Clean the milk frother after each use."},
        {"id": "other", "text": "The grinder has 40 settings. The beans come from Brazil. Water hardness matters."},
    ]
    assert (await stack.ingest.ingest("chunked", documents)).failed == 0
    reranked = await reranked_search(service, stack, "chunked", QUERY, SearchRerank(RERANKER, 10), limit=3)
    assert {h.id for h in reranked.hits} == {"long", "short", "other"}
    for hit, score in zip(reranked.hits, reranked.rerank_scores):
        assert hit.chunk is not None or hit.id == "short"
        scored = hit.chunk.text if hit.chunk is not None else hit.text
        expected = float(predicted(reference_cross_encoder, QUERY, [scored])[0])
        assert abs(score - expected) < TOLERANCE
    assert reranked.rerank_scores == sorted(reranked.rerank_scores, reverse=True)
