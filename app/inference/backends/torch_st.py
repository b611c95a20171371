"""sentence-transformers on torch: CUDA with fp16 where asked, else CPU.

Texts reach the model as token ids counted at admission (encode_ids: truncated here, then the
model's forward), so each is tokenized once; encode() takes texts for the other callers. Where the
model is a BERT pipeline unpadded_bert reproduces, encode_ids computes no padding (setting
CITADEL_INFERENCE__UNPADDED, on by default); otherwise the rows are padded for the model's forward.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from loguru import logger

from app.errors import ModelUnavailable
from app.inference import cpu_share
from app.inference.backends import unpadded_bert
from app.inference.backends.tokens import TokenCounter, padded_features
from app.domain.models import ModelSpec
from app.settings import InferenceSettings


class TorchSentenceTransformerBackend:
    """One SentenceTransformer on one device. encode() blocks; the batcher calls it in a thread."""

    def __init__(self, spec: ModelSpec, model_dir: Path, device: str, settings: InferenceSettings) -> None:
        import torch
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        on_cpu = not device.startswith("cuda")
        if on_cpu:
            torch.set_num_threads(cpu_share.threads_per_pass(settings))  # process-wide, as it is in torch
        elif settings.threads > 0:
            torch.set_num_threads(settings.threads)  # the CPU side of a GPU replica
        self.passes_at_once = cpu_share.passes_at_once(settings) if on_cpu else 1
        self._text_lock = threading.Lock()  # encode(texts): the model's tokenizer is not thread-safe
        if not on_cpu and not torch.cuda.is_available():
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
        self._trailing_specials = self._counter.trailing_special_tokens
        self._pad_id = int(self._model.tokenizer.pad_token_id or 0)
        self._wants_token_types = "token_type_ids" in getattr(self._model.tokenizer, "model_input_names", ())
        self._unpadded = (
            unpadded_bert.UnpaddedBertEncoder(self._model)
            if settings.unpadded and unpadded_bert.supports(self._model)
            else None
        )
        self.forward_kind = "padded" if self._unpadded is None else "unpadded" if self._unpadded.scripted else "unpadded (eager)"
        logger.info(
            "loaded {} (sentence-transformers) on {} from {}; forward: {}", spec.name, device, model_dir, self.forward_kind
        )

    def encode(self, texts: Sequence[str], normalize: bool) -> np.ndarray:
        with self._text_lock, self._torch.inference_mode():
            vectors = self._model.encode(
                list(texts),
                batch_size=max(1, len(texts)),  # batches are formed by our batcher, not here
                show_progress_bar=False,
                convert_to_numpy=True,
                normalize_embeddings=normalize,
            )
        return np.asarray(vectors, dtype=np.float32)

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        return self._counter.ids(texts)

    def encode_ids(self, ids: Sequence[Sequence[int]], normalize: bool) -> np.ndarray:
        """What encode() gives for the texts of these ids (the same truncation: the text is cut,
        its trailing special tokens kept), without tokenizing them again."""
        torch = self._torch
        cap, tail = self.max_seq_length, self._trailing_specials
        rows = [list(seq) if len(seq) <= cap else [*seq[: cap - tail], *seq[len(seq) - tail :]] for seq in ids]
        if self._unpadded is not None:
            with torch.inference_mode():
                vectors = self._unpadded.encode(rows)
                if normalize:
                    vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
                return vectors.float().cpu().numpy()
        features = padded_features(rows, self._pad_id, self.device, None, self._wants_token_types)
        with torch.inference_mode():
            vectors = self._model.forward(features)["sentence_embedding"]
            if normalize:
                vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
            return vectors.float().cpu().numpy()

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self._counter.count(texts)

    def token_spans(self, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], int]:
        return self._counter.spans(texts), self._counter.special_tokens

    def token_spans_and_ids(self, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], int, list[list[int]]]:
        """token_spans() and token_ids() from one pass of the tokenizer."""
        spans, ids = self._counter.spans_and_ids(texts)
        return spans, self._counter.special_tokens, ids

    def close(self) -> None:
        self._model = None  # type: ignore[assignment]
        if self.device.startswith("cuda"):
            self._torch.cuda.empty_cache()
