"""STS-B through the API: the same Spearman as a direct encode (published MTEB 0.8203)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

STS = Path(__file__).resolve().parents[3] / "shared" / "data" / "stsbenchmark" / "sts-test.csv"


def load_pairs():
    pairs = []
    with STS.open(newline="", encoding="utf-8") as handle:
        for row in csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) >= 7:
                pairs.append((row[5], row[6], float(row[4])))
    return pairs


@pytest.mark.skipif(not STS.exists(), reason=f"STS-B test set not found at {STS}")
def test_stsb_spearman_through_graphql(live_server):
    pairs = load_pairs()
    assert len(pairs) == 1379
    texts = sorted({t for a, b, _ in pairs for t in (a, b)})
    vectors: dict[str, np.ndarray] = {}
    query = "query($t: [String!]!) { embed(texts: $t) { embeddings { vector } } }"
    for start in range(0, len(texts), 200):
        chunk = texts[start : start + 200]
        body = live_server.graphql(query, {"t": chunk})
        assert "errors" not in body, body
        for text, item in zip(chunk, body["data"]["embed"]["embeddings"]):
            vectors[text] = np.asarray(item["vector"], dtype=np.float32)
    cosine = [float(vectors[a] @ vectors[b]) for a, b, _ in pairs]
    rho = spearmanr(cosine, [gold for _, _, gold in pairs]).statistic
    print(f"STS-B Spearman through GraphQL: {rho:.4f} (published 0.8203)")
    assert abs(rho - 0.8203) < 0.005, rho
