"""Pure reranking arithmetic behind search's extras (no I/O): the vector of a stored document,
Qdrant's average-vector recommendation, maximal marginal relevance, Weaviate's autocut,
reciprocal rank fusion across collections and grouping by a metadata value.

Each function says exactly what it computes, so tests can hold an oracle beside it and
docs/from-weaviate.md can quote it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")

RRF_K = 60  # reciprocal rank fusion: score = sum over rankings of 1 / (RRF_K + rank), rank from 1


def unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def document_vector(chunk_vectors: Sequence[Sequence[float]]) -> np.ndarray:
    """A document's one vector: an unchunked document's stored vector as it is; for a chunked
    one, the normalized mean of its normalized chunk vectors (each chunk weighs the same)."""
    rows = np.asarray(chunk_vectors, dtype=np.float64)
    if len(rows) == 1:
        return rows[0]
    return unit(np.mean([unit(r) for r in rows], axis=0))


def average_vector(positive: Sequence[np.ndarray], negative: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Qdrant's recommend strategy `average_vector`: with avg_p the mean of the positive vectors
    and avg_n the mean of the negative ones, the query is avg_p + (avg_p - avg_n) = 2*avg_p - avg_n
    (just avg_p without negatives)."""
    avg_p = np.mean(np.asarray(positive, dtype=np.float64), axis=0)
    if len(negative) == 0:
        return avg_p
    avg_n = np.mean(np.asarray(negative, dtype=np.float64), axis=0)
    return avg_p + (avg_p - avg_n)


def mmr_order(scores: Sequence[float], vectors: Sequence[np.ndarray], diversity: float, count: int) -> list[int]:
    """Maximal marginal relevance: indices of `count` candidates (given best first), picked one
    at a time as argmax of (1 - diversity) * relevance - diversity * (max cosine similarity to
    the candidates already picked), ties to the better-ranked candidate. Relevance is the score
    min-max scaled over the candidates to [0, 1] (1 for all when the scores are equal), so it
    works for every mode and distance. diversity 0 keeps the order; the first pick is always the
    best hit."""
    n = len(scores)
    if n == 0 or count <= 0:
        return []
    s = np.asarray(scores, dtype=np.float64)
    spread = float(s.max() - s.min())
    relevance = (s - s.min()) / spread if spread > 0 else np.ones(n)
    unit_rows = np.asarray([unit(np.asarray(v, dtype=np.float64)) for v in vectors])
    similarity = unit_rows @ unit_rows.T
    picked: list[int] = []
    closest = np.full(n, -np.inf)  # max similarity to the picked ones
    left = list(range(n))
    while left and len(picked) < count:
        penalty = np.where(np.isfinite(closest), closest, 0.0)
        values = (1 - diversity) * relevance - diversity * penalty
        best = max(left, key=lambda i: (values[i], -i))
        picked.append(best)
        left.remove(best)
        closest = np.maximum(closest, similarity[best])
    return picked


def autocut(scores: Sequence[float], cut_off: int) -> int:
    """How many results Weaviate's autocut keeps: the scores (in result order) are scaled so the
    first is 0 and the last 1 and compared with a straight line from 0 to 1 (x_i = i / (n-1));
    d_i = y_i - x_i. Index i > 0 is a jump where d_i > d_{i-1} and d_i >= d_{i+1} (for the last
    index of 3 or more: d_i > d_{i-1} and d_i > d_{i-2}); the results are cut before the
    `cut_off`-th jump, i.e. that jump's index is the count kept. No such jump: all are kept (also
    when all scores are equal or there are fewer than 2)."""
    n = len(scores)
    if n <= 1 or scores[0] == scores[-1]:
        return n
    step = 1.0 / (n - 1)
    first, last = float(scores[0]), float(scores[-1])
    diff = [(float(y) - first) / (last - first) - i * step for i, y in enumerate(scores)]
    jumps = 0
    for i in range(1, n):
        if i == n - 1 and n > 2:
            jump = diff[i] > diff[i - 1] and diff[i] > diff[i - 2]
        else:
            jump = diff[i] > diff[i - 1] and i + 1 < n and diff[i] >= diff[i + 1]
        if jump:
            jumps += 1
            if jumps >= cut_off:
                return i
    return n


def rrf(rankings: Sequence[Sequence[T]], key: Callable[[T], Hashable], k: int = RRF_K) -> list[tuple[T, float]]:
    """Reciprocal rank fusion of rankings (each best first): every item scores the sum of
    1 / (k + rank) over the rankings it is in (rank from 1); best first, ties in the order of the
    rankings given and then of rank."""
    scores: dict[Hashable, float] = {}
    first: dict[Hashable, tuple[int, int, T]] = {}
    for r, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            name = key(item)
            scores[name] = scores.get(name, 0.0) + 1.0 / (k + rank)
            first.setdefault(name, (rank, r, item))
    order = sorted(scores, key=lambda name: (-scores[name], first[name][0], first[name][1]))
    return [(first[name][2], scores[name]) for name in order]


def group_values(metadata: Mapping[str, Any] | None, field: str) -> list[Any]:
    """The group(s) of a document by metadata `field` (a dotted path), as Qdrant's group query
    reads a payload: a string, integer or bool value is one group, a list puts the document in
    each of its (distinct) values' groups, anything else (missing, null, float, object) in none."""
    raw: Any = metadata or {}
    for part in field.split("."):
        raw = raw.get(part) if isinstance(raw, Mapping) else None
    values = raw if isinstance(raw, list) else [raw]
    seen: list[Any] = []
    for v in values:
        if isinstance(v, (str, int, bool)) and not any(type(v) is type(s) and v == s for s in seen):
            seen.append(v)
    return seen


def group_hits(
    hits: Iterable[T], metadata: Callable[[T], Mapping[str, Any] | None], field: str, groups: int, per_group: int
) -> tuple[list[tuple[Any, list[T]]], bool]:
    """Hits (best first) grouped by `field`: groups in the order of their best hit, at most
    `groups` of them with at most `per_group` hits each. Also whether the answer is settled by
    these hits alone: `groups` groups found and each full (more hits further down could not
    change it)."""
    found: dict[tuple[str, Any], list[T]] = {}
    for hit in hits:
        for value in group_values(metadata(hit), field):
            tag = (type(value).__name__, value)
            if tag not in found:
                if len(found) >= groups:
                    continue
                found[tag] = []
            if len(found[tag]) < per_group:
                found[tag].append(hit)
    settled = len(found) >= groups and all(len(members) >= per_group for members in found.values())
    return [(tag[1], members) for tag, members in found.items()], settled
