"""Fakes for unit tests of one piece, one per interface: an embedding backend, the model pool
over it, the embedding cache and the READY-model source. Integration and e2e tests use the real
parts instead.

    from tests.support.fakes import FakeBackend, FakeCache, FakeModels, FakePool
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from app.errors import ModelUnavailable
from app.settings import ModelSpec


def vector_of(text: str, dimensions: int, scale: float = 1.0) -> np.ndarray:
    """The same float32 vector for the same text within a process; different texts differ."""
    rng = np.random.default_rng(abs(hash(text)) % (2**32))
    return (rng.standard_normal(dimensions) * scale).astype(np.float32)


class FakeBackend:
    """An EmbeddingBackend with deterministic vectors from the text (not unit length unless
    `scale` makes them so: normalisation is the caller's); records every pass; a pass can be held
    by clearing `gate`, and `fail_next` makes the next one raise."""

    model_name = "fake"
    max_seq_length = 512
    device = "cpu"
    passes_at_once = 1

    def __init__(self, dimensions: int = 8, scale: float = 3.0) -> None:
        self.dimensions = dimensions
        self.scale = scale
        self.passes: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.fail_next = False

    def vector(self, text: str) -> np.ndarray:
        return vector_of(text, self.dimensions, self.scale)

    def encode(self, texts: Sequence[str], normalize: bool) -> np.ndarray:
        self.started.set()
        self.gate.wait(timeout=30)
        self.passes.append(list(texts))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("device fell over")
        return np.stack([self.vector(t) for t in texts])

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def close(self) -> None:
        pass


class FakePool:
    """ModelPool.encode over one FakeBackend, whatever the model name; `error` makes calls raise."""

    def __init__(self, backend: FakeBackend | None = None) -> None:
        self.backend = backend or FakeBackend(dimensions=384, scale=1.0)
        self.error: Exception | None = None

    @property
    def calls(self) -> list[list[str]]:
        return self.backend.passes

    async def encode(
        self,
        name: str,
        texts: Sequence[str],
        normalize: bool,
        tokens: Any = None,
        fair_key: str = "internal",
        wait_for_room: bool = False,
    ) -> np.ndarray:
        if self.error:
            self.backend.passes.append(list(texts))
            raise self.error
        return self.backend.encode(texts, normalize)


class FakeCache:
    """Same interface as EmbeddingCache, in a dict."""

    def __init__(self) -> None:
        self.store: dict[str, np.ndarray] = {}

    def keys(self, model: str, revision: str, prompt: str, normalize: bool, texts: Sequence[str]) -> list[str]:
        return [f"{model}|{revision}|{prompt}|{normalize}|{t}" for t in texts]

    async def get_many(self, keys: Sequence[str]) -> list[np.ndarray | None]:
        return [self.store.get(k) for k in keys]

    async def set_many(self, items: dict[str, np.ndarray]) -> None:
        self.store.update(items)


class FakeModels:
    """The READY-model source with one model, always ready; any other name is unavailable."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    async def ready_spec(self, name: str | None, wait: bool = False, *, may_download: bool = True) -> ModelSpec:
        if name not in (None, self.spec.name):
            raise ModelUnavailable(f"{name} is not ready")
        return self.spec
