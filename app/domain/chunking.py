"""Sentence-aligned chunks of a text, counted in a model's tokens (pure functions).

A chunk is a character range [start, end) of the text: `text[start:end]` is what gets embedded
and what a search hit returns. Chunks end at sentence boundaries where they can; a sentence
longer than the budget is cut at token boundaries. `overlap_tokens` repeats trailing whole
sentences (or pieces) of one chunk at the start of the next, so an answer that straddles a
boundary is whole in one of them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from app.errors import BadInput

# A sentence ends after . ! ? (and closing quotes/brackets) followed by whitespace, or at a line break.
_SENTENCE_END = re.compile(r"""[.!?。！？]+["'”’)\]]*\s+|\n+""")

Span = tuple[int, int]  # character offsets of one token


@dataclass(frozen=True)
class Chunking:
    max_tokens: int
    overlap_tokens: int = 0


@dataclass(frozen=True)
class TextChunk:
    index: int
    start: int
    end: int


def check_chunking(max_tokens: int, overlap_tokens: int, window: int) -> Chunking:
    """A collection's chunking, or BadInput: 8 <= maxTokens <= the model's window, overlap below it."""
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 8 <= max_tokens <= window:
        raise BadInput(
            f"chunking.maxTokens must be between 8 and the model's window ({window} tokens), got {max_tokens!r}",
            field="chunking",
        )
    if isinstance(overlap_tokens, bool) or not isinstance(overlap_tokens, int) or not 0 <= overlap_tokens < max_tokens // 2 + 1:
        raise BadInput(
            f"chunking.overlapTokens must be between 0 and half of maxTokens, got {overlap_tokens!r}",
            field="chunking",
        )
    return Chunking(max_tokens, overlap_tokens)


def sentence_units(text: str, spans: Sequence[Span], max_tokens: int) -> list[tuple[int, int]]:
    """Token ranges [a, b) of the sentences of `text` (by the tokens' char offsets), each cut to
    at most max_tokens tokens."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    units: list[tuple[int, int]] = []
    start = 0
    boundary = 0
    for i, (token_start, _) in enumerate(spans):
        # A token that begins at or after a sentence end starts a new sentence.
        moved = False
        while boundary < len(ends) and token_start >= ends[boundary]:
            boundary += 1
            moved = True
        if moved and i > start:
            units.append((start, i))
            start = i
    if start < len(spans):
        units.append((start, len(spans)))
    out: list[tuple[int, int]] = []
    for a, b in units:
        out.extend((s, min(s + max_tokens, b)) for s in range(a, b, max_tokens))
    return out


def chunk_text(text: str, spans: Sequence[Span], max_tokens: int, overlap_tokens: int = 0) -> list[TextChunk]:
    """Chunks of at most max_tokens tokens (spans: the text's tokens, special tokens excluded)."""
    if not spans:
        return [TextChunk(0, 0, len(text))]
    units = sentence_units(text, spans, max_tokens)
    size = [b - a for a, b in units]
    chunks: list[TextChunk] = []
    i = 0
    while i < len(units):
        j, total = i, 0
        while j < len(units) and total + size[j] <= max_tokens:
            total += size[j]
            j += 1
        j = max(j, i + 1)  # cannot happen (units fit), but always progress
        chunks.append(TextChunk(len(chunks), spans[units[i][0]][0], spans[units[j - 1][1] - 1][1]))
        if j >= len(units):
            break
        # The next chunk starts with the trailing units that fit in the overlap (never all of them).
        k, overlap = j, 0
        while k - 1 > i and overlap + size[k - 1] <= overlap_tokens:
            overlap += size[k - 1]
            k -= 1
        i = k
    return chunks
