"""Embedding contracts shared by the inference pool, the cache and the services."""

from __future__ import annotations

import enum
from typing import Protocol, Sequence

import numpy as np


class EmbedKind(enum.Enum):
    QUERY = "QUERY"
    DOCUMENT = "DOCUMENT"


class EmbeddingBackend(Protocol):
    """A loaded model on one device. encode() is blocking: the pool calls it in a worker thread."""

    model_name: str
    dimensions: int
    max_seq_length: int
    device: str

    def encode(self, texts: Sequence[str], normalize: bool) -> np.ndarray:
        """float32 array of shape (len(texts), dimensions), rows in input order."""
        ...

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text (before truncation), used for token budgets and length sorting."""
        ...

    def token_spans(self, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], int]:
        """Character offsets of each text's tokens (special tokens excluded), and how many special
        tokens the model adds to every text: what chunking and truncation warnings count."""
        ...

    def close(self) -> None: ...


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (L2); an all-zero row stays zero instead of turning NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
