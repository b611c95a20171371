"""Ingest tokenizes each document once: the pass that measures it for chunking and truncation
also gives the ids its forward pass reads (EmbedRequest.tokens), on the real model and stack."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.domain.chunking import Chunking
from app.domain.embedding import EmbedKind
from app.inference.backends.tokens import TokenCounter
from app.inference.backends.torch_st import TorchSentenceTransformerBackend
from tests.support.stack import Stack, model_runtime, open_stack  # noqa: F401  (session fixture)

TEXTS = [
    "A cat sleeps on the warm windowsill.",
    "Descaling removes limescale from the espresso machine; do it monthly.",
    "Ünïcödé, emoji 🚀 and numbers 3.14159 tokenize into word pieces.",
    " ".join(f"word{i}" for i in range(300)),  # past the window: truncated as embed() truncates it
]


@pytest.fixture
async def stack(model_runtime, tmp_path: Path) -> Any:  # noqa: F811
    async with open_stack(model_runtime, "edge", tmp_path) as opened:
        yield opened


@pytest.fixture
def tokenizer_calls(monkeypatch) -> Counter:
    """How often the torch backend's tokenizer ran, by purpose."""
    calls: Counter = Counter()
    for name in ("token_ids", "token_spans", "token_spans_and_ids"):
        original = getattr(TorchSentenceTransformerBackend, name)

        def counted(self, texts, _original=original, _name=name):
            calls[_name] += len(texts)
            return _original(self, texts)

        monkeypatch.setattr(TorchSentenceTransformerBackend, name, counted)
    return calls


def test_one_pass_gives_the_spans_and_ids_of_two(stack: Stack) -> None:
    backend = next(iter(stack.embedder.pool._loaded.values())).replicas[0].backend
    counter: TokenCounter = backend._counter
    spans, ids = counter.spans_and_ids(TEXTS)
    assert spans == counter.spans(TEXTS)
    assert ids == counter.ids(TEXTS)


async def test_a_whole_document_is_tokenized_once_and_embedded_as_embed_does(stack: Stack, tokenizer_calls: Counter) -> None:
    await stack.collections.create("once")
    documents = [{"id": f"d{i}", "text": text} for i, text in enumerate(TEXTS)]
    report = await stack.ingest.ingest("once", documents)
    assert (report.inserted, report.failed) == (len(TEXTS), 0)
    assert [w.id for w in report.warnings] == ["d3"]  # the long one is truncated, and said to be
    # Measured once for chunking/truncation, and those ids went to the forward pass.
    assert tokenizer_calls == Counter({"token_spans_and_ids": len(TEXTS)}), tokenizer_calls

    stored = await stack.store.document_vectors((await stack.repo.require_collection("once")).store_name, [d["id"] for d in documents])
    expected = await stack.embedder.embed(TEXTS, kind=EmbedKind.DOCUMENT, use_cache=False)
    for i, document in enumerate(documents):
        (vector,) = stored[document["id"]]
        np.testing.assert_allclose(np.asarray(vector, dtype=np.float32), expected.vectors[i], atol=1e-5, rtol=0)


async def test_chunks_are_measured_once_and_each_chunk_read_by_the_model(stack: Stack, tokenizer_calls: Counter) -> None:
    await stack.collections.create("chunks", chunking=Chunking(16, 0))
    report = await stack.ingest.ingest("chunks", [{"id": "long", "text": TEXTS[3]}])
    assert report.chunks > 1
    # A chunk is a slice of the document's text: the model reads each as a text of its own.
    assert tokenizer_calls == Counter({"token_spans_and_ids": 1, "token_ids": report.chunks}), tokenizer_calls
