"""Sentence-aligned chunking: budgets hold, chunks are exact slices, sentences stay whole where
they fit, overlap repeats trailing sentences, and every token is covered."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.chunking import check_chunking, chunk_text, sentence_units
from app.errors import BadInput


def word_spans(text: str) -> list[tuple[int, int]]:
    """A stand-in tokenizer: every word and punctuation mark is a token."""
    return [m.span() for m in re.finditer(r"\w+|[^\w\s]", text)]


def tokens_in(text: str, start: int, end: int) -> int:
    return sum(1 for s, e in word_spans(text) if start <= s and e <= end)


TEXT = "One two three. Four five six seven! Eight nine?\nTen eleven twelve thirteen fourteen. Fifteen."


def test_chunks_end_at_sentence_boundaries_within_the_budget():
    chunks = chunk_text(TEXT, word_spans(TEXT), max_tokens=10)
    pieces = [TEXT[c.start : c.end] for c in chunks]
    # 4 + 5 tokens, then 3 + 6 (the next sentence would pass 10), then the rest.
    assert pieces == ["One two three. Four five six seven!", "Eight nine?\nTen eleven twelve thirteen fourteen.", "Fifteen."]
    assert [c.index for c in chunks] == [0, 1, 2]
    assert all(tokens_in(TEXT, c.start, c.end) <= 10 for c in chunks)


def test_a_sentence_longer_than_the_budget_is_cut_at_tokens():
    text = " ".join(f"w{i}" for i in range(25)) + "."
    chunks = chunk_text(text, word_spans(text), max_tokens=8)
    assert [tokens_in(text, c.start, c.end) for c in chunks] == [8, 8, 8, 2]
    assert text[chunks[0].start : chunks[0].end] == "w0 w1 w2 w3 w4 w5 w6 w7"


def test_overlap_repeats_trailing_sentences():
    text = "A b. C d. E f. G h. I j."
    chunks = chunk_text(text, word_spans(text), max_tokens=6, overlap_tokens=3)
    pieces = [text[c.start : c.end] for c in chunks]
    assert pieces == ["A b. C d.", "C d. E f.", "E f. G h.", "G h. I j."]


def test_a_text_without_tokens_is_one_chunk():
    assert [(c.start, c.end) for c in chunk_text("   ", [], 16)] == [(0, 3)]


def test_sentence_units_follow_the_sentence_ends():
    units = sentence_units(TEXT, word_spans(TEXT), 100)
    assert [b - a for a, b in units] == [4, 5, 3, 6, 2]


@settings(max_examples=200, deadline=None)
@given(
    words=st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta.", "eps!", "zeta?", "eta\n"]), min_size=1, max_size=80),
    max_tokens=st.integers(8, 40),
    overlap=st.integers(0, 20),
)
def test_every_token_is_in_a_chunk_and_budgets_hold(words, max_tokens, overlap):
    overlap = min(overlap, max_tokens // 2)
    text = " ".join(words)
    spans = word_spans(text)
    chunks = chunk_text(text, spans, max_tokens, overlap)
    for c in chunks:
        assert 0 <= c.start < c.end <= len(text)
        assert tokens_in(text, c.start, c.end) <= max_tokens
    covered = {i for i, (s, e) in enumerate(spans) for c in chunks if c.start <= s and e <= c.end}
    assert covered == set(range(len(spans)))
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)  # progress, no loops


@pytest.mark.parametrize(("max_tokens", "overlap"), [(4, 0), (300, 0), (64, 40), (64, -1), (True, 0)])
def test_bad_chunking_is_bad_input(max_tokens, overlap):
    with pytest.raises(BadInput):
        check_chunking(max_tokens, overlap, window=256)


def test_good_chunking_is_kept():
    assert check_chunking(96, 16, window=256).max_tokens == 96
