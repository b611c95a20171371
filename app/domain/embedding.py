"""Embedding contracts shared by the inference pool, the cache and the services."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

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
    passes_at_once: int  # forward passes it runs at once: encode is called from that many threads

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


@runtime_checkable
class TokenIdBackend(Protocol):
    """What an EmbeddingBackend has besides when it can be handed the token ids counted at
    admission, so that each text is tokenized once on its way to the model (not once to count it
    and again to encode it)."""

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids as the model sees it (special tokens included, before truncation)."""
        ...

    def encode_ids(self, ids: Sequence[Sequence[int]], normalize: bool) -> np.ndarray:
        """encode() of the texts these ids came from: the same vectors, without tokenizing."""
        ...


@dataclass(frozen=True)
class Tokenized:
    """Texts measured in a model's tokens at admission: the counts always (budgets, length
    sorting, usage), the ids too where the backend encodes from ids."""

    counts: list[int]
    ids: list[list[int]] | None = None

    def pick(self, indices: Sequence[int]) -> "Tokenized":
        ids = self.ids
        return Tokenized([self.counts[i] for i in indices], [ids[i] for i in indices] if ids is not None else None)

    @staticmethod
    def joined(parts: Sequence["Tokenized"]) -> "Tokenized":
        """The parts' texts as one Tokenized, in order (with ids only where every part has them)."""
        ids = [row for part in parts for row in part.ids or ()] if all(part.ids is not None for part in parts) else None
        return Tokenized([count for part in parts for count in part.counts], ids)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (L2); an all-zero row stays zero instead of turning NaN."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
