"""Turn a sentence-transformers model directory into an ONNX directory that fastembed loads.

The directory holds model.onnx (the transformer: token ids in, last hidden state out, dynamic
batch and sequence axes), the tokenizer files with model_max_length set to the model's
max_seq_length (fastembed truncates by it), config.json, and citadel_onnx.json, which records
the pooling and normalisation that fastembed must apply to match sentence-transformers.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
from loguru import logger
from sentence_transformers import SentenceTransformer
from transformers.utils import logging as hf_logging

from app.errors import BadInput

EXPORT_MANIFEST = "citadel_onnx.json"
ONNX_FILE = "model.onnx"
_POOLINGS = {"mean": "mean", "cls": "cls", "lasttoken": "last_token"}
_AXES = {0: "batch", 1: "sequence"}


def export_onnx(model_dir: Path, out_dir: Path) -> Path:
    """Export model_dir into out_dir (created if needed) and return out_dir."""
    hf_logging.disable_progress_bar()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    st = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    manifest = _manifest(st)
    out_dir.mkdir(parents=True, exist_ok=True)

    transformer: Any = st[0].auto_model
    # Eager attention traces into plain MatMul/Softmax with the padding mask applied; the SDPA
    # path has data-dependent shortcuts that tracing would freeze.
    transformer.set_attn_implementation("eager")
    transformer.eval()
    tokenizer = st.tokenizer
    # A padded example: the traced graph must carry the attention-mask path.
    example = tokenizer(["a short one", "a noticeably longer example sentence"], padding=True, return_tensors="pt")
    input_names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in example]

    wrapper = _HiddenStates(transformer, input_names).eval()
    with warnings.catch_warnings(), torch.inference_mode():
        # The legacy TorchScript exporter warns about itself and about traced Python bools;
        # the export is checked against sentence-transformers by the tests instead.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            tuple(example[n] for n in input_names),
            str(out_dir / ONNX_FILE),
            dynamo=False,  # the dynamo exporter needs onnxscript, which is not a dependency
            input_names=input_names,
            output_names=["last_hidden_state"],
            dynamic_axes={name: _AXES for name in [*input_names, "last_hidden_state"]},
            opset_version=17,
        )

    tokenizer.save_pretrained(str(out_dir))
    transformer.config.save_pretrained(str(out_dir))
    _set_max_length(out_dir / "tokenizer_config.json", manifest["max_seq_length"])
    (out_dir / EXPORT_MANIFEST).write_text(json.dumps(manifest, indent=2))
    logger.info("exported {} to ONNX in {}", model_dir, out_dir)
    return out_dir


class _HiddenStates(torch.nn.Module):
    """Positional tensors in, last_hidden_state out: the signature the exporter traces."""

    def __init__(self, transformer: torch.nn.Module, input_names: list[str]) -> None:
        super().__init__()
        self.transformer = transformer
        self.input_names = input_names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.transformer(**dict(zip(self.input_names, tensors))).last_hidden_state


def _manifest(st: Any) -> dict[str, Any]:
    modules = [type(m).__name__ for m in st]
    if not modules or modules[0] != "Transformer":
        raise BadInput(f"cannot export to ONNX: the model does not start with a Transformer module ({modules})")
    unsupported = [m for m in modules[1:] if m not in ("Pooling", "Normalize")]
    if unsupported:
        raise BadInput(f"cannot export to ONNX: modules {unsupported} have no fastembed equivalent")
    pooling = "cls"
    for module in st:
        if type(module).__name__ == "Pooling":
            mode = module.pooling_mode
            if not isinstance(mode, str) or mode not in _POOLINGS:
                raise BadInput(f"cannot export to ONNX: pooling {mode!r} has no fastembed equivalent")
            pooling = _POOLINGS[mode]
    return {
        "pooling": pooling,
        "normalize": "Normalize" in modules,
        "max_seq_length": int(st.max_seq_length),
        "dimensions": int(st.get_embedding_dimension()),
        "onnx_file": ONNX_FILE,
    }


def _set_max_length(path: Path, max_length: int) -> None:
    config = json.loads(path.read_text()) if path.exists() else {}
    config["model_max_length"] = max_length
    config.pop("max_length", None)
    path.write_text(json.dumps(config, indent=2))
