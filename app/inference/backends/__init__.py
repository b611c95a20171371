"""Embedding backends behind app.domain.embedding.EmbeddingBackend, chosen by the catalog."""

from __future__ import annotations

from pathlib import Path

from app.domain.embedding import EmbeddingBackend
from app.errors import ModelUnavailable
from app.domain.models import ModelSpec
from app.settings import InferenceSettings


def load_backend(spec: ModelSpec, model_dir: Path, device: str, settings: InferenceSettings) -> EmbeddingBackend:
    """Load spec's model from model_dir on device. Blocking (seconds): call it in a thread."""
    # Imported lazily: torch and onnxruntime are heavy and a process may use only one of them.
    if spec.is_reranker:  # a cross-encoder: scores pairs, has no vectors (app/inference/backends/cross_encoder.py)
        from app.inference.backends.cross_encoder import CrossEncoderBackend

        return CrossEncoderBackend(spec, model_dir, device, settings)  # type: ignore[return-value]
    if spec.backend == "sentence-transformers":
        from app.inference.backends.torch_st import TorchSentenceTransformerBackend

        backend: EmbeddingBackend = TorchSentenceTransformerBackend(spec, model_dir, device, settings)
    elif spec.backend == "fastembed":
        from app.inference.backends.fastembed_onnx import FastembedBackend

        backend = FastembedBackend(spec, model_dir, device, settings)
    else:  # the catalog's Literal makes this unreachable unless a spec is built by hand
        raise ModelUnavailable(f"model {spec.name!r}: unknown backend {spec.backend!r}")
    if backend.dimensions != spec.dimensions:
        backend.close()
        raise ModelUnavailable(
            f"model {spec.name!r} produces {backend.dimensions}-dimensional vectors; "
            f"the catalog says {spec.dimensions}",
            model=spec.name,
        )
    return backend
