"""A padding-free forward pass for BERT-family sentence-transformers models on torch.

A padded batch of short texts of mixed lengths spends most of its time on padding: every linear
layer (which is nearly all the work at these lengths) runs over batch x longest tokens. Here the
linear layers, layer norms and activations run over the real tokens only, packed into one
[tokens, hidden] matrix; only attention sees a padded [batch, longest] view, with the same key
mask as the padded model. TEI does the same on GPUs (varlen flash attention); on a CPU the saving
is the padding share of the batch. The weights are the model's own (query, key and value fused
into one matrix once); the output equals the padded forward's within float rounding, which
tests/integration/test_backends.py checks against sentence-transformers' own encode.

Only a pipeline this module understands is taken: a BertModel with absolute position
embeddings, then mean or CLS pooling, then an optional Normalize. Anything else (`supports`
says no) keeps the padded forward.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def supports(model: Any) -> bool:
    """Whether `model` (a SentenceTransformer) is a pipeline this forward reproduces exactly."""
    from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers.models.bert.modeling_bert import BertModel

    modules = list(model)
    if len(modules) not in (2, 3) or not isinstance(modules[0], Transformer) or not isinstance(modules[1], Pooling):
        return False
    if len(modules) == 3 and not isinstance(modules[2], Normalize):
        return False
    bert = modules[0].auto_model
    if type(bert) is not BertModel or getattr(bert.config, "position_embedding_type", "absolute") != "absolute":
        return False
    return _pooling_mode(modules[1]) in ("mean", "cls")


def _pooling_mode(pooling: Any) -> str | None:
    mode = getattr(pooling, "pooling_mode", None)
    if isinstance(mode, str):
        return mode
    # Older sentence-transformers: one flag per mode.
    flags = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token"}
    chosen = [name for name, flag in flags.items() if getattr(pooling, flag, False)]
    others = [k for k in vars(pooling) if k.startswith("pooling_mode_") and getattr(pooling, k) is True]
    return chosen[0] if len(chosen) == 1 and len(others) == 1 else None


class UnpaddedBertEncoder:
    """Sentence embeddings of token-id rows (already truncated) without computing padding."""

    def __init__(self, model: Any) -> None:
        import torch

        self._torch = torch
        modules = list(model)
        self._bert = modules[0].auto_model
        self._mode = _pooling_mode(modules[1])
        self._normalize = len(modules) == 3
        config = self._bert.config
        self._heads = config.num_attention_heads
        self._head_size = config.hidden_size // config.num_attention_heads
        # One GEMM for query, key and value instead of three.
        self._qkv = [
            (
                torch.cat([lay.attention.self.query.weight, lay.attention.self.key.weight, lay.attention.self.value.weight]),
                torch.cat([lay.attention.self.query.bias, lay.attention.self.key.bias, lay.attention.self.value.bias]),
            )
            for lay in self._bert.encoder.layer
        ]

    def encode(self, rows: Sequence[Sequence[int]]) -> Any:
        """[len(rows), hidden] float tensor: the pipeline's sentence embeddings."""
        torch = self._torch
        functional = torch.nn.functional
        device = self._bert.embeddings.word_embeddings.weight.device
        batch, longest = len(rows), max(len(row) for row in rows)
        flat = torch.tensor([token for row in rows for token in row], dtype=torch.long, device=device)
        lengths = torch.tensor([len(row) for row in rows], device=device)
        starts = lengths.cumsum(0) - lengths  # where each text begins in the packed tokens
        owners = torch.repeat_interleave(torch.arange(batch, device=device), lengths)  # each token's text
        positions = torch.arange(len(flat), device=device) - starts[owners]
        slots = owners * longest + positions  # where each real token sits in the padded view
        key_mask = torch.arange(longest, device=device)[None, :] < lengths[:, None]
        key_mask = key_mask[:, None, None, :]  # [batch, 1, 1, longest]: True where a key is real

        embeddings = self._bert.embeddings
        hidden = (
            embeddings.word_embeddings(flat)
            + embeddings.position_embeddings(positions)
            + embeddings.token_type_embeddings.weight[0]
        )
        hidden = embeddings.LayerNorm(hidden)
        heads, size = self._heads, self._head_size
        width = heads * size
        for layer, (qkv_weight, qkv_bias) in zip(self._bert.encoder.layer, self._qkv, strict=True):
            qkv = functional.linear(hidden, qkv_weight, qkv_bias)  # [tokens, 3 * width]
            padded = qkv.new_zeros(batch * longest, 3 * width)
            padded[slots] = qkv
            q, k, v = padded.view(batch, longest, 3, heads, size).permute(2, 0, 3, 1, 4).unbind(0)
            context = functional.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
            context = context.transpose(1, 2).reshape(batch * longest, width)[slots]
            attention = layer.attention.output
            hidden = attention.LayerNorm(attention.dense(context) + hidden)
            inner = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(hidden))
            hidden = layer.output.LayerNorm(layer.output.dense(inner) + hidden)

        if self._mode == "cls":
            sentences = hidden[starts]
        else:
            sums = hidden.new_zeros(batch, hidden.shape[1]).index_add_(0, owners, hidden)
            sentences = sums / lengths.to(hidden.dtype)[:, None]
        if self._normalize:
            sentences = functional.normalize(sentences, p=2, dim=1)
        return sentences
