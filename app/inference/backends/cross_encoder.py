"""Cross-encoders (catalog task "rerank") on torch: a sentence-transformers CrossEncoder on one device.

A cross-encoder reads a (query, document) pair and gives one logit per label; the pool batches
pairs like texts (same batcher, fair queue and token budget; a pair costs its tokens after
truncation). encode() takes pairs and returns the raw logits, (pairs, labels); activate() applies
the model's own activation (CrossEncoder.activation_fn: sigmoid for one label), so a score equals
CrossEncoder.predict for the same pair, and rawScores can have the logits of the same pass.

Tokenizing goes through CrossEncoder.preprocess, exactly as predict does (truncation of the
longest side first, token types for BERT pairs); the tokenizer is not thread-safe, so that step
holds a lock, while the forward passes of the pool's threads run side by side.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from loguru import logger

from app.domain.models import ModelSpec
from app.errors import ModelUnavailable
from app.inference import cpu_share
from app.settings import InferenceSettings

Pair = tuple[str, str]


class CrossEncoderBackend:
    """One CrossEncoder on one device. encode() blocks; the batcher calls it in a worker thread."""

    def __init__(self, spec: ModelSpec, model_dir: Path, device: str, settings: InferenceSettings) -> None:
        import torch
        from sentence_transformers import CrossEncoder
        from tokenizers import Tokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        on_cpu = not device.startswith("cuda")
        if on_cpu:
            torch.set_num_threads(cpu_share.threads_per_pass(settings))
        elif settings.threads > 0:
            torch.set_num_threads(settings.threads)
        if not on_cpu and not torch.cuda.is_available():
            raise ModelUnavailable(f"model {spec.name!r}: device {device} requested but CUDA is not available")
        self.passes_at_once = cpu_share.passes_at_once(settings) if on_cpu else 1
        self.model_name = spec.name
        self.device = device
        self._torch = torch
        self._lock = threading.Lock()  # CrossEncoder.preprocess: the tokenizer is not thread-safe
        self._model = CrossEncoder(str(model_dir), device=device, local_files_only=True)
        if device.startswith("cuda"):
            self._model.half()  # predict upcasts the scores to float32, as we do
        self._model.eval()
        self.max_seq_length = int(self._model.max_seq_length or spec.max_seq_length)
        self.dimensions = int(self._model.num_labels)  # one logit per label
        self._activation = self._model.activation_fn
        tokenizer_file = Path(model_dir) / "tokenizer.json"
        if tokenizer_file.is_file():
            counter = Tokenizer.from_file(str(tokenizer_file))
        else:
            counter = Tokenizer.from_str(self._model.tokenizer.backend_tokenizer.to_str())
        counter.no_padding()
        counter.enable_truncation(self.max_seq_length, strategy="longest_first")
        self._counter = counter
        self._counter_lock = threading.Lock()
        logger.info("loaded {} (cross-encoder, {} label(s)) on {} from {}", spec.name, self.dimensions, device, model_dir)

    def pair_tokens(self, pairs: Sequence[Pair]) -> list[int]:
        """Tokens of each pair as the model reads it (special tokens included, after truncation)."""
        with self._counter_lock:
            return [len(e.ids) for e in self._counter.encode_batch([tuple(p) for p in pairs])]

    def token_counts(self, texts: Sequence[Pair]) -> list[int]:  # type: ignore[override]
        return self.pair_tokens(texts)

    def token_spans(self, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], int]:
        raise ModelUnavailable(f"model {self.model_name!r} is a reranker: it does not chunk or embed text")

    def encode(self, texts: Sequence[Pair], normalize: bool) -> np.ndarray:
        """Raw logits, float32 (len(pairs), labels), rows in input order (`normalize` is ignored)."""
        from sentence_transformers.util import batch_to_device

        torch = self._torch
        with self._lock:
            features = self._model.preprocess([tuple(p) for p in texts])
        features = batch_to_device(features, self.device)
        with torch.inference_mode():
            scores = self._model(features)["scores"]
        return scores.float().cpu().numpy().reshape(len(texts), -1)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """The model's activation over logits (what CrossEncoder.predict applies)."""
        torch = self._torch
        if self._activation is None:
            return logits.astype(np.float32)
        with torch.inference_mode():
            return self._activation(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))).numpy()

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
