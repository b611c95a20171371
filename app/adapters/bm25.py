"""The gateway's one BM25 encoder (qdrant-edge-py's `Bm25`), feeding both vector store adapters.

Documents get term-frequency weights (k=1.2, b=0.75), queries weight each distinct term 1.0;
the store multiplies by IDF (sparse vectors with the IDF modifier), so scores are BM25 over the
collection's current statistics. English tokenisation with stemming and stop words; part codes
such as `QX-4471-B` become their pieces, which all must be present to rank a text first.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import qdrant_edge as qe

from app.domain.vectors import SparseVector

_INLINE_CHARS = 8_192  # below this, encoding on the event loop beats a thread hop


class Bm25Encoder:
    def __init__(self) -> None:
        self._model = qe.Bm25()

    def query(self, text: str) -> SparseVector:
        vector = self._model.embed_query(text)
        return SparseVector(indices=list(vector.indices), values=list(vector.values))

    async def documents(self, texts: Sequence[str]) -> list[SparseVector]:
        if sum(len(t) for t in texts) <= _INLINE_CHARS:
            return self._documents(texts)
        return await asyncio.to_thread(self._documents, texts)

    def _documents(self, texts: Sequence[str]) -> list[SparseVector]:
        out = []
        for text in texts:
            vector = self._model.embed_document(text)
            out.append(SparseVector(indices=list(vector.indices), values=list(vector.values)))
        return out


_default: Bm25Encoder | None = None


def bm25() -> Bm25Encoder:
    """The process-wide encoder (stateless apart from its configuration)."""
    global _default
    if _default is None:
        _default = Bm25Encoder()
    return _default
