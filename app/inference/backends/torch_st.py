"""sentence-transformers on torch: CUDA with fp16 where asked, else CPU."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from loguru import logger

from app.errors import ModelUnavailable
from app.inference.backends.tokens import TokenCounter
from app.domain.models import ModelSpec
from app.settings import InferenceSettings


class TorchSentenceTransformerBackend:
    """One SentenceTransformer on one device. encode() blocks; the batcher calls it in a thread."""

    def __init__(self, spec: ModelSpec, model_dir: Path, device: str, settings: InferenceSettings) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if settings.threads > 0:
            torch.set_num_threads(settings.threads)
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelUnavailable(f"model {spec.name!r}: device {device} requested but CUDA is not available")

        self.model_name = spec.name
        self.device = device
        self._torch = torch
        # A local directory plus local_files_only: loading never touches the network. (Setting
        # HF_HUB_OFFLINE here instead would also switch off the model downloader.)
        self._model = SentenceTransformer(str(model_dir), device=device, local_files_only=True)
        if device.startswith("cuda"):
            self._model.half()  # fp16 halves memory and roughly doubles throughput on tensor cores
        self._model.eval()
        self._model.max_seq_length = spec.max_seq_length
        self.max_seq_length = spec.max_seq_length
        dims = self._model.get_embedding_dimension()
        self.dimensions = int(dims if dims is not None else spec.dimensions)
        self._counter = TokenCounter.from_tokenizer(self._model.tokenizer.backend_tokenizer)
        logger.info("loaded {} (sentence-transformers) on {} from {}", spec.name, device, model_dir)

    def encode(self, texts: Sequence[str], normalize: bool) -> np.ndarray:
        with self._torch.inference_mode():
            vectors = self._model.encode(
                list(texts),
                batch_size=max(1, len(texts)),  # batches are formed by our batcher, not here
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=normalize,
            )
        return np.asarray(vectors, dtype=np.float32)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self._counter.count(texts)

    def token_spans(self, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], int]:
        return self._counter.spans(texts), self._counter.special_tokens

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
