"""The scan budget (app.domain.scans) and the facet counter a scan feeds page by page."""

from __future__ import annotations

import threading

import pytest

from app.adapters.qdrant_common import FacetCounter
from app.domain.scans import ScanBudget, off_loop
from app.errors import BadInput


def test_charges_add_up_and_the_one_over_the_limit_is_refused_untouched():
    budget = ScanBudget(1_000)
    budget.charge(600, "first", "fix it")
    budget.charge(400, "second", "fix it")
    with pytest.raises(BadInput) as refused:
        budget.charge(1, "facets of 'x'", "Put 'x' in indexedFields.")
    message = refused.value.message
    assert message.startswith("facets of 'x' would scan 1 points, after 1000 already scanned by this request")
    assert "at most 1000 (CITADEL_LIMITS__MAX_SCAN_POINTS). Put 'x' in indexedFields." in message
    assert refused.value.to_extensions() == {"code": "BAD_INPUT", "maxScanPoints": 1_000}
    assert budget.used == 1_000


def test_zero_is_no_limit():
    budget = ScanBudget(0)
    budget.charge(10**9, "anything", "")
    assert budget.take(500) == 500


def test_take_grants_what_is_left_and_give_back_returns_the_unread_part():
    budget = ScanBudget(700)
    assert budget.take(500) == 500
    assert budget.take(500) == 200
    assert budget.take(500) == 0
    budget.give_back(150)  # the last page was short
    assert budget.used == 550 and budget.take(500) == 150


def test_the_facet_counter_counts_documents_once_by_their_first_chunk():
    counter = FacetCounter("metadata.tags")
    assert counter.fields == ["metadata.tags", "chunk.index"]
    counter.add([{"metadata": {"tags": ["a", "b"]}}, {"metadata": {"tags": "a"}}])
    counter.add(
        [
            {"metadata": {"tags": ["c"]}, "chunk": {"index": 0}},
            {"metadata": {"tags": ["c", "a"]}, "chunk": {"index": 1}},  # a later chunk: not counted
            {"metadata": {"tags": ["a", "a"]}},  # an element repeated counts once
            {"metadata": {"tags": [True, 1, 2.5, None]}},  # True and 1 differ; floats and null are no values
            None,
        ]
    )
    top = [(type(f.value), f.value, f.count) for f in counter.top(10)]
    assert top == [(str, "a", 3), (bool, True, 1), (int, 1, 1), (str, "b", 1), (str, "c", 1)]  # ties by type, value
    assert [f.value for f in counter.top(1)] == ["a"]


async def test_scan_pages_run_in_the_scan_threads():
    thread = await off_loop(threading.current_thread)
    assert thread is not threading.current_thread() and thread.name.startswith("citadel-scan")
