"""The in-process ceiling: sentence-transformers `encode` in the bench process, on the files the
server uses, as the baseline every throughput table compares with."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from bench._server import MODEL


@dataclass
class EncodeRate:
    texts: int
    seconds: float
    cpu_seconds: float = math.nan  # this process, every thread

    @property
    def per_second(self) -> float:
        return self.texts / self.seconds if self.seconds > 0 else math.nan

    @property
    def cpu_ms_per_text(self) -> float:
        return 1000.0 * self.cpu_seconds / self.texts if self.texts else math.nan


def mean_rate(rates: Sequence[EncodeRate]) -> float:
    """Sentences/s over several measurements taken together (total texts / total time)."""
    seconds = sum(r.seconds for r in rates)
    return sum(r.texts for r in rates) / seconds if seconds > 0 else math.nan


class InProcessEncoder:
    """sentence-transformers `encode` in this process, on the model files the server uses."""

    def __init__(self, model: str = MODEL) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        from app.inference.sources import local_model_dir
        from app.settings import Settings

        spec = Settings(_env_file=None).model(model)  # type: ignore[call-arg]
        self._torch = torch
        self.model = SentenceTransformer(str(local_model_dir(spec)), device="cpu", local_files_only=True)
        self.model.max_seq_length = spec.max_seq_length
        self.model.eval()

    def rate(self, texts: Sequence[str], batch_size: int = 64) -> EncodeRate:
        """Sentences/s of encoding `texts` in batches of `batch_size` (after one warm-up batch)."""
        with self._torch.inference_mode():
            self.model.encode(
                list(texts[:batch_size]),
                batch_size=batch_size,
                normalize_embeddings=True,
            )
            started, cpu = time.perf_counter(), time.process_time()
            self.model.encode(
                list(texts),
                batch_size=batch_size,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return EncodeRate(len(texts), time.perf_counter() - started, time.process_time() - cpu)
