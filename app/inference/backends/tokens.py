"""Token counting on a private copy of a model's tokenizer.

The copy matters: transformers' fast tokenizers change truncation/padding state on every call, so
counting with the model's own tokenizer from the event loop while a worker thread encodes would
race. A separate `tokenizers.Tokenizer` without truncation or padding counts safely.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer


class TokenCounter:
    def __init__(self, tokenizer: Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()

    @classmethod
    def from_file(cls, path: Path) -> TokenCounter:
        return cls(Tokenizer.from_file(str(path)))

    @classmethod
    def from_tokenizer(cls, tokenizer: Tokenizer) -> TokenCounter:
        return cls(Tokenizer.from_str(tokenizer.to_str()))

    @property
    def special_tokens(self) -> int:
        """Tokens the model adds to every text ([CLS], [SEP], ...)."""
        return len(self._tokenizer.encode("", add_special_tokens=True).ids) - len(self._tokenizer.encode("").ids)

    def spans(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """Character offsets of each text's tokens, special tokens excluded (chunking counts these)."""
        encoded = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
        return [[(int(s), int(e)) for s, e in enc.offsets] for enc in encoded]

    @property
    def trailing_special_tokens(self) -> int:
        """Special tokens the model adds after a text ([SEP]): what truncation must keep at the end."""
        marked = self._tokenizer.encode("a", add_special_tokens=True).ids
        bare = self._tokenizer.encode("a", add_special_tokens=False).ids
        start = next(i for i in range(len(marked)) if marked[i : i + len(bare)] == bare)
        return len(marked) - start - len(bare)

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's token ids, special tokens included, before truncation."""
        return [e.ids for e in self._tokenizer.encode_batch(list(texts), add_special_tokens=True)]

    def spans_and_ids(self, texts: Sequence[str]) -> tuple[list[list[tuple[int, int]]], list[list[int]]]:
        """spans() and ids() of the same texts from one pass of the tokenizer (a document is
        chunked by its spans and, where it is embedded whole, encoded from its ids)."""
        spans: list[list[tuple[int, int]]] = []
        ids: list[list[int]] = []
        for enc in self._tokenizer.encode_batch(list(texts), add_special_tokens=True):
            spans.append([(int(s), int(e)) for (s, e), special in zip(enc.offsets, enc.special_tokens_mask) if not special])
            ids.append(enc.ids)
        return spans, ids

    def count(self, texts: Sequence[str]) -> list[int]:
        # Special tokens included: they occupy positions of the model's max_seq_length too.
        return [len(ids) for ids in self.ids(texts)]


def padded_features(
    rows: Sequence[Sequence[int]], pad_id: int, device: str, types: Sequence[Sequence[int]] | None, wants_types: bool
) -> dict[str, object]:
    """A sentence-transformers feature dict for token id rows of mixed lengths: the ids padded
    with `pad_id`, the attention mask, and (where the model reads them) the token types, zero
    where `types` is None. For a model's own padded forward from ids tokenized earlier."""
    import torch

    width = max(len(row) for row in rows)
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    type_ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for index, row in enumerate(rows):
        input_ids[index, : len(row)] = row
        mask[index, : len(row)] = 1
        if types is not None:
            type_ids[index, : len(row)] = types[index]
    features: dict[str, object] = {
        "input_ids": torch.from_numpy(input_ids).to(device),
        "attention_mask": torch.from_numpy(mask).to(device),
        "modality": "text",
    }
    if wants_types:
        features["token_type_ids"] = torch.from_numpy(type_ids).to(device)
    return features
