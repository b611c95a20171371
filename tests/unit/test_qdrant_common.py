"""The parts both Qdrant adapters share: one table per concept, and the facet fallback count."""

from __future__ import annotations

import qdrant_edge as qe
from qdrant_client import models

from app.adapters.qdrant_common import CLIENT, DISTANCES, EDGE, INDEX_TYPES, count_facets
from app.domain.filters import INDEX_TYPES as FILTER_INDEX_TYPES
from app.domain.vectors import Distance


def test_every_distance_and_index_type_exists_in_both_libraries():
    assert set(DISTANCES) == set(Distance)
    assert set(INDEX_TYPES) == set(FILTER_INDEX_TYPES)
    for edge_name, client_name in [*DISTANCES.values(), *INDEX_TYPES.values()]:
        assert hasattr(qe.Distance, edge_name) or hasattr(qe.PayloadSchemaType, edge_name)
        assert hasattr(models.Distance, client_name) or hasattr(models.PayloadSchemaType, client_name)
    assert getattr(qe.Distance, DISTANCES[Distance.DOT][EDGE]) == qe.Distance.Dot
    assert getattr(models.Distance, DISTANCES[Distance.EUCLID][CLIENT]) == models.Distance.EUCLID


def test_count_facets_counts_like_qdrant():
    payloads = [
        {"metadata": {"t": "a", "tags": ["x", "y", "x"]}},
        {"metadata": {"t": "a", "tags": ["x"]}},
        {"metadata": {"t": "b", "flag": True}},
        {"metadata": {"t": 1, "flag": 1}},
        {"metadata": {"t": None, "tags": []}},
        {"metadata": {"t": 2.5}},  # floats are not facet values
        {"other": 1},
    ]
    assert [(f.value, f.count) for f in count_facets(payloads, "metadata.t", 10)] == [("a", 2), (1, 1), ("b", 1)]
    # A point counts once per distinct value; True and 1 stay apart.
    assert {(f.value, f.count) for f in count_facets(payloads, "metadata.tags", 10)} == {("x", 2), ("y", 1)}
    flags = count_facets(payloads, "metadata.flag", 10)
    assert sorted((type(f.value).__name__, f.count) for f in flags) == [("bool", 1), ("int", 1)]
    assert [f.value for f in count_facets(payloads, "metadata.t", 1)] == ["a"]
