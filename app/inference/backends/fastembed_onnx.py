"""fastembed on ONNX Runtime, loading a local model directory (fastembed never downloads here).

fastembed's own post-processing is bypassed for normalisation: the model is registered as a
custom model with the right pooling and normalization=False, and vectors are normalised here,
when asked or when the model itself ends in a Normalize layer (as sentence-transformers does),
so both backends agree for either value of `normalize`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from app.domain.embedding import unit_rows
from app.errors import ModelUnavailable
from app.inference.backends.tokens import TokenCounter
from app.inference.onnx_export import EXPORT_MANIFEST
from app.domain.models import ModelSpec
from app.settings import InferenceSettings


@dataclass(frozen=True)
class OnnxLayout:
    model_file: str  # relative to the model directory
    pooling: str  # fastembed PoolingType value: CLS | MEAN | LAST_TOKEN
    normalized: bool  # the model's own output is unit-length (a Normalize layer)


class FastembedBackend:
    def __init__(self, spec: ModelSpec, model_dir: Path, device: str, settings: InferenceSettings) -> None:
        from fastembed import TextEmbedding

        self.model_name = spec.name
        self.device = device
        self.max_seq_length = spec.max_seq_length
        # One pass at once, on all the threads (ONNX Runtime's default): fastembed tokenizes inside
        # embed() with a tokenizer that is not thread-safe.
        self.passes_at_once = 1
        layout = onnx_layout(spec, model_dir)
        self._always_normalize = layout.normalized
        registered = _register(spec, model_dir, layout)
        self._embedding = TextEmbedding(
            model_name=registered,
            cache_dir=str(model_dir),
            threads=settings.threads or None,
            providers=_providers(spec, device),
            specific_model_path=str(model_dir),
            local_files_only=True,
        )
        self._truncate_at(spec.max_seq_length)
        # The ONNX graph does not declare its output width; one tiny pass tells it.
        self.dimensions = int(self.encode(["dimension probe"], normalize=False).shape[1])
        self._counter = TokenCounter.from_file(model_dir / "tokenizer.json")
        logger.info("loaded {} (fastembed, {} pooling) on {} from {}", spec.name, layout.pooling, device, model_dir)

    def encode(self, texts: Sequence[str], normalize: bool) -> np.ndarray:
        rows = list(self._embedding.embed(list(texts), batch_size=max(1, len(texts))))
        vectors = np.asarray(np.stack(rows), dtype=np.float32)
        if normalize or self._always_normalize:
            vectors = unit_rows(vectors)
        return vectors

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        return self._counter.count(texts)

    def token_spans(self, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], int]:
        return self._counter.spans(texts), self._counter.special_tokens

    def close(self) -> None:
        self._embedding = None  # type: ignore[assignment]

    def _truncate_at(self, max_length: int) -> None:
        # The spec's max_seq_length wins over tokenizer_config.json, as in the torch backend.
        tokenizer = getattr(getattr(self._embedding, "model", None), "tokenizer", None)
        if tokenizer is not None:
            direction = (tokenizer.truncation or {}).get("direction", "right")
            tokenizer.enable_truncation(max_length=max_length, direction=direction)


def onnx_layout(spec: ModelSpec, model_dir: Path) -> OnnxLayout:
    """Which ONNX file to run and how to pool its token states."""
    manifest = model_dir / EXPORT_MANIFEST
    if manifest.is_file():  # written by `citadel models export-onnx`
        data = json.loads(manifest.read_text())
        return OnnxLayout(model_file=data["onnx_file"], pooling=data["pooling"].upper(), normalized=data["normalize"])
    builtin = _builtin_layout(spec.name)
    if builtin is not None and (model_dir / builtin.model_file).is_file():
        return builtin
    model_file = next(
        (f for f in ("model.onnx", "onnx/model.onnx", "model_optimized.onnx") if (model_dir / f).is_file()), None
    )
    if model_file is None:
        raise ModelUnavailable(
            f"model {spec.name!r}: no ONNX file in {model_dir}; "
            "convert a sentence-transformers model with `citadel models export-onnx`",
            model=spec.name,
        )
    return OnnxLayout(
        model_file=model_file, pooling=_pooling_from_st_config(model_dir), normalized=_st_normalizes(model_dir)
    )


def _builtin_layout(name: str) -> OnnxLayout | None:
    """fastembed's own catalog knows the file and pooling of the models it ships recipes for."""
    from fastembed.text.onnx_embedding import OnnxTextEmbedding
    from fastembed.text.pooled_embedding import PooledEmbedding
    from fastembed.text.pooled_normalized_embedding import PooledNormalizedEmbedding

    recipes = ((PooledNormalizedEmbedding, "MEAN", True), (PooledEmbedding, "MEAN", False), (OnnxTextEmbedding, "CLS", True))
    for cls, pooling, normalized in recipes:
        for description in cls._list_supported_models():
            if description.model.lower() == name.lower():
                return OnnxLayout(model_file=description.model_file, pooling=pooling, normalized=normalized)
    return None


def _pooling_from_st_config(model_dir: Path) -> str:
    config_path = model_dir / "1_Pooling" / "config.json"
    if not config_path.is_file():
        return "MEAN"
    config: dict[str, Any] = json.loads(config_path.read_text())
    mode = config.get("pooling_mode")
    if mode is None:
        legacy = {"pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_lasttoken": "lasttoken"}
        mode = next((value for key, value in legacy.items() if config.get(key)), "mean")
    return {"cls": "CLS", "mean": "MEAN", "lasttoken": "LAST_TOKEN"}.get(str(mode), "MEAN")


def _st_normalizes(model_dir: Path) -> bool:
    modules_path = model_dir / "modules.json"
    if not modules_path.is_file():
        return False
    return any(str(m.get("type", "")).endswith("Normalize") for m in json.loads(modules_path.read_text()))


def _register(spec: ModelSpec, model_dir: Path, layout: OnnxLayout) -> str:
    """Register the directory as a fastembed custom model once per process; return its name."""
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    digest = hashlib.sha256(f"{model_dir.resolve()}|{layout}|{spec.dimensions}".encode()).hexdigest()[:12]
    name = f"citadel-local/{spec.name}@{digest}"
    known = {d["model"].lower() for d in TextEmbedding.list_supported_models()}
    if name.lower() not in known:
        TextEmbedding.add_custom_model(
            model=name,
            pooling=PoolingType(layout.pooling),
            normalization=False,
            sources=ModelSource(hf=spec.repo_id or "local/unused"),  # never fetched: a local path is given
            dim=spec.dimensions,
            model_file=layout.model_file,
        )
    return name


def _providers(spec: ModelSpec, device: str) -> list[Any]:
    import onnxruntime as ort

    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        index = int(device.partition(":")[2] or 0)
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise ModelUnavailable(f"model {spec.name!r}: ONNX Runtime cannot run on {device} here", model=spec.name)
