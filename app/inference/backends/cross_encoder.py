"""Cross-encoders (catalog task "rerank") on torch: a sentence-transformers CrossEncoder on one device.

A cross-encoder reads a (query, document) pair and gives one logit per label; the pool batches
pairs like texts (same batcher, fair queue and token budget; a pair costs its tokens after
truncation). activate() applies the model's own activation (CrossEncoder.activation_fn: sigmoid
for one label), so a score equals CrossEncoder.predict for the same pair, and rawScores can have
the logits of the same pass.

Each pair is tokenized once, at admission (pair_token_ids: the fast tokenizer with
CrossEncoder.preprocess's truncation, longest side first, giving the same ids and token types);
the batcher hands those to encode_ids, which returns the raw logits, (pairs, labels). Where the
model is a BERT sequence classifier unpadded_bert reproduces, that pass computes no padding and
runs as one scripted graph without the GIL (setting CITADEL_INFERENCE__UNPADDED, on by default);
otherwise the ids are padded for the model's own forward. encode() takes the pairs themselves
(through CrossEncoder.preprocess, under a lock: that tokenizer is not thread-safe) for callers
without ids.
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
from app.inference.backends import unpadded_bert
from app.inference.backends.tokens import padded_features
from app.settings import InferenceSettings

Pair = tuple[str, str]
PairIds = tuple[list[int], list[int]]  # a pair's token ids and token type ids, after truncation


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
        self._pad_id = int(self._model.tokenizer.pad_token_id or 0)
        self._wants_token_types = "token_type_ids" in getattr(self._model.tokenizer, "model_input_names", ())
        self._unpadded = (
            unpadded_bert.UnpaddedCrossEncoder(self._model)
            if settings.unpadded and unpadded_bert.supports_cross_encoder(self._model)
            else None
        )
        scripted = self._unpadded is not None and self._unpadded.scripted
        self.forward_kind = "padded" if self._unpadded is None else "unpadded" if scripted else "unpadded (eager)"
        logger.info(
            "loaded {} (cross-encoder, {} label(s)) on {} from {}; forward: {}",
            spec.name, self.dimensions, device, model_dir, self.forward_kind,
        )  # fmt: skip

    def pair_token_ids(self, pairs: Sequence[Pair]) -> list[PairIds]:
        """Each pair's (ids, token type ids) as the model reads it: special tokens included, after
        truncation (what CrossEncoder.preprocess gives the model, without the padding)."""
        with self._counter_lock:
            # One pair at a time, on the calling thread: encode_batch hands the work to the
            # tokenizer's own thread pool, which waits for cores the forward passes hold (16 pairs
            # beside two busy passes: 2.5-4.5 ms against 1.9 ms in turn; idle 1.0 against 1.7).
            encoded = [self._counter.encode(query, document) for query, document in pairs]
        return [(e.ids, e.type_ids) for e in encoded]

    def token_counts(self, texts: Sequence[Pair]) -> list[int]:  # type: ignore[override]
        return [len(ids) for ids, _ in self.pair_token_ids(texts)]

    def token_spans(self, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], int]:
        raise ModelUnavailable(f"model {self.model_name!r} is a reranker: it does not chunk or embed text")

    def encode_ids(self, ids: Sequence[PairIds], normalize: bool) -> np.ndarray:
        """encode() of the pairs these (ids, type ids) came from, without tokenizing them again."""
        torch = self._torch
        if self._unpadded is not None:
            with torch.inference_mode():
                logits = self._unpadded.scores([row for row, _ in ids], [types for _, types in ids])
                return logits.float().cpu().numpy()
        features = padded_features(
            [row for row, _ in ids], self._pad_id, self.device, [types for _, types in ids], self._wants_token_types
        )
        with torch.inference_mode():
            scores = self._model(features)["scores"]
        return scores.float().cpu().numpy().reshape(len(ids), -1)

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
        self._unpadded = None
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
