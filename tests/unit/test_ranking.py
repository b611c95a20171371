"""The reranking arithmetic of app/domain/ranking.py against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from app.domain.ranking import autocut, average_vector, document_vector, group_hits, group_values, mmr_order, rrf


@pytest.mark.parametrize(
    ("scores", "cut_off", "kept"),
    [
        ([1, 2, 3, 4, 5], 1, 5),  # a straight line has no jump
        ([1, 2, 3, 9, 10], 1, 3),  # distances (ascending): cut before 9
        ([0.99, 0.98, 0.97, 0.5, 0.49, 0.48], 1, 3),  # scores (descending): the same shape
        ([0.99, 0.98, 0.6, 0.59, 0.2, 0.19], 1, 2),
        ([0.99, 0.98, 0.6, 0.59, 0.2, 0.19], 2, 4),
        ([0.99, 0.98, 0.6, 0.59, 0.2, 0.19], 3, 6),  # fewer jumps than asked: everything
        ([0.5, 0.5, 0.5], 1, 3),  # all equal
        ([0.7], 1, 1),
        ([], 1, 0),
    ],
)
def test_autocut_cuts_before_the_nth_jump(scores, cut_off, kept):
    assert autocut(scores, cut_off) == kept


def test_rrf_sums_reciprocal_ranks_with_k_60():
    fused = rrf([["a", "b", "c"], ["b", "d"]], key=lambda x: x)
    scores = dict(fused)
    assert scores["b"] == pytest.approx(1 / 62 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61) and scores["d"] == pytest.approx(1 / 62)
    assert [x for x, _ in fused] == ["b", "a", "d", "c"]  # a and d: rank 1 beats rank 2


def test_average_vector_is_qdrants_formula():
    p = [np.array([1.0, 0.0]), np.array([0.0, 1.0])]
    n = [np.array([1.0, 1.0])]
    assert average_vector(p, n).tolist() == pytest.approx([0.0, 0.0])
    assert average_vector(p).tolist() == pytest.approx([0.5, 0.5])
    assert average_vector([np.array([2.0, 0.0])], [np.array([0.0, 1.0])]).tolist() == pytest.approx([4.0, -1.0])


def test_document_vector_keeps_one_vector_and_averages_unit_chunks():
    assert document_vector([[3.0, 4.0]]).tolist() == [3.0, 4.0]
    mean = document_vector([[10.0, 0.0], [0.0, 1.0]])
    assert mean.tolist() == pytest.approx([2**-0.5, 2**-0.5])


def test_mmr_keeps_the_order_at_zero_and_spreads_at_one():
    vectors = [np.array(v, dtype=float) for v in ([1, 0], [1, 0.01], [0, 1])]
    scores = [0.9, 0.89, 0.5]
    assert mmr_order(scores, vectors, 0.0, 3) == [0, 1, 2]
    assert mmr_order(scores, vectors, 0.7, 3) == [0, 2, 1]  # the near-duplicate waits
    assert mmr_order(scores, vectors, 1.0, 2)[0] == 0  # the best hit stays first


def test_groups_follow_their_best_hit_and_list_values_join_each_group():
    hits = [("h1", {"g": "x"}), ("h2", {"g": ["y", "x"]}), ("h3", {"g": "x"}), ("h4", {}), ("h5", {"g": "z"})]
    grouped, settled = group_hits(hits, lambda h: h[1], "g", groups=2, per_group=2)
    assert [(v, [h[0] for h in members]) for v, members in grouped] == [("x", ["h1", "h2"]), ("y", ["h2"])]
    assert not settled  # y could still get a second hit further down
    grouped, settled = group_hits(hits, lambda h: h[1], "g", groups=1, per_group=2)
    assert settled
    assert group_values({"a": {"b": [1, True, 1, 2.5]}}, "a.b") == [1, True]
