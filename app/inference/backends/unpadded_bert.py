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
embeddings, then mean or CLS pooling, then an optional Normalize (`supports`); or a cross-encoder
whose one module is a BertForSequenceClassification (`supports_cross_encoder`: pairs carry token
type ids, and BERT's pooler and the classifier run inside the same scripted pass, so the whole
pass stays one GIL-free graph; its output equals CrossEncoder.predict's logits within float
rounding, which tests/integration/test_cross_encoder_unpadded.py checks). Anything else keeps the
padded forward.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Optional

import torch
from loguru import logger
from torch import Tensor
from torch.nn import functional


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
    if getattr(bert.config, "hidden_act", None) != "gelu":  # the exact (erf) GELU packed_forward applies
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


def supports_cross_encoder(model: Any) -> bool:
    """Whether `model` (a sentence-transformers CrossEncoder) is a BERT sequence classifier whose
    logits this forward reproduces exactly."""
    from transformers.models.bert.modeling_bert import BertForSequenceClassification

    try:
        modules = list(model)
    except TypeError:  # an older CrossEncoder, not a module list
        return False
    if len(modules) != 1 or getattr(modules[0], "transformer_task", None) != "sequence-classification":
        return False
    classifier = getattr(modules[0], "auto_model", None)
    if type(classifier) is not BertForSequenceClassification or classifier.bert.pooler is None:
        return False
    if type(classifier.classifier) is not torch.nn.Linear:  # e.g. keep_in_fp32_modules swaps its class
        return False
    config = classifier.config
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    return getattr(config, "hidden_act", None) == "gelu" and config.problem_type in (None, "regression")


class _PackedBert:
    """A BertModel's weights in packed_forward's order, and packed_forward scripted.

    The forward is one TorchScript function when torch can script it: a scripted graph runs
    without the GIL, so a pass does not stall at every op while the event loop (or the other
    pass) holds it. Eager, each of a pass's ~100 ops waits for the GIL on its way back to Python,
    up to the 5 ms switch interval while the loop answers requests: two eager passes beside a
    Python thread busy 30% of the time did 0.85x the texts per second of two scripted ones.
    Where scripting is unavailable the same function runs eagerly, with the same vectors."""

    def __init__(self, bert: Any) -> None:
        config = bert.config
        self._heads = int(config.num_attention_heads)
        self._eps = float(config.layer_norm_eps)
        embeddings = bert.embeddings
        self._embedding_weights = [
            tensor.detach()
            for tensor in (
                embeddings.word_embeddings.weight,
                embeddings.position_embeddings.weight,
                embeddings.token_type_embeddings.weight,
                embeddings.LayerNorm.weight,
                embeddings.LayerNorm.bias,
            )
        ]
        self._layer_weights = [_layer_weights(layer) for layer in bert.encoder.layer]
        self._forward = _scripted(packed_forward)
        self.scripted = self._forward is not packed_forward

    def _run(
        self,
        rows: Sequence[Sequence[int]],
        types: Sequence[Sequence[int]] | None,
        mean: bool,
        normalize: bool,
        head: list[Tensor],
    ) -> Any:
        device = self._embedding_weights[0].device
        flat = torch.tensor([token for row in rows for token in row], dtype=torch.long, device=device)
        flat_types = (
            None if types is None else torch.tensor([t for row in types for t in row], dtype=torch.long, device=device)
        )
        lengths = torch.tensor([len(row) for row in rows], dtype=torch.long, device=device)
        # optimized_execution(False): shapes change with every pass, so the profiling executor's
        # shape specialisation would only re-plan; the plain interpreter runs each pass as is.
        with torch.inference_mode(), torch.jit.optimized_execution(False):
            return self._forward(
                flat,
                flat_types,
                lengths,
                max(len(row) for row in rows),
                self._embedding_weights,
                self._layer_weights,
                self._heads,
                self._eps,
                mean,
                normalize,
                head,
            )


class UnpaddedBertEncoder(_PackedBert):
    """Sentence embeddings of token-id rows (already truncated) without computing padding."""

    def __init__(self, model: Any) -> None:
        modules = list(model)
        super().__init__(modules[0].auto_model)
        self._mean = _pooling_mode(modules[1]) == "mean"
        self._normalize = len(modules) == 3

    def encode(self, rows: Sequence[Sequence[int]]) -> Any:
        """[len(rows), hidden] float tensor: the pipeline's sentence embeddings."""
        return self._run(rows, None, self._mean, self._normalize, [])


class UnpaddedCrossEncoder(_PackedBert):
    """A BERT cross-encoder's logits of token-id pairs (already truncated) without computing padding."""

    def __init__(self, model: Any) -> None:
        classifier = list(model)[0].auto_model
        super().__init__(classifier.bert)
        pooler = classifier.bert.pooler.dense
        linear = classifier.classifier
        self._head = [t.detach() for t in (pooler.weight, pooler.bias, linear.weight, linear.bias)]

    def scores(self, rows: Sequence[Sequence[int]], types: Sequence[Sequence[int]]) -> Any:
        """[len(rows), labels] tensor: the classifier's logits (`types`: each row's token type ids)."""
        return self._run(rows, types, False, False, self._head)


def _layer_weights(layer: Any) -> list[Any]:
    """One encoder layer's weights in packed_forward's order (query, key and value fused into one
    matrix, so one GEMM instead of three)."""
    own = layer.attention.self
    attention = layer.attention.output
    return [
        tensor.detach()
        for tensor in (
            torch.cat([own.query.weight, own.key.weight, own.value.weight]),
            torch.cat([own.query.bias, own.key.bias, own.value.bias]),
            attention.dense.weight,
            attention.dense.bias,
            attention.LayerNorm.weight,
            attention.LayerNorm.bias,
            layer.intermediate.dense.weight,
            layer.intermediate.dense.bias,
            layer.output.dense.weight,
            layer.output.dense.bias,
            layer.output.LayerNorm.weight,
            layer.output.LayerNorm.bias,
        )
    ]


def _scripted(function: Any) -> Any:
    """`function` compiled by TorchScript, or itself where torch cannot script it (TorchScript is
    deprecated; while torch ships it, it is what runs a whole graph without the GIL)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.script(function)
    except Exception as exc:  # noqa: BLE001  a torch without TorchScript: the eager forward
        logger.warning("the unpadded forward runs eagerly (TorchScript unavailable: {})", exc)
        return function


def packed_forward(
    flat: Tensor,
    types: Optional[Tensor],
    lengths: Tensor,
    longest: int,
    embedding: list[Tensor],
    layers: list[list[Tensor]],
    heads: int,
    eps: float,
    mean: bool,
    normalize: bool,
    head: list[Tensor],
) -> Tensor:
    """The BERT pipeline over packed tokens (`flat`: every row's ids, one after another;
    `lengths`: each row's token count). `types`: the token type ids beside `flat` (pairs), or
    None for single texts (type 0 throughout). `head`: empty, or the pooler's and classifier's
    weight and bias (a sequence classifier's logits from the CLS token). Written in the subset of
    Python TorchScript compiles."""
    batch = lengths.shape[0]
    device = flat.device
    starts = lengths.cumsum(0) - lengths  # where each text begins in the packed tokens
    owners = torch.repeat_interleave(torch.arange(batch, device=device), lengths)  # each token's text
    positions = torch.arange(flat.shape[0], device=device) - starts[owners]
    slots = owners * longest + positions  # where each real token sits in the padded view
    key_mask = torch.arange(longest, device=device)[None, :] < lengths[:, None]
    key_mask = key_mask[:, None, None, :]  # [batch, 1, 1, longest]: True where a key is real

    hidden = embedding[0][flat] + embedding[1][positions]
    hidden = hidden + (embedding[2][0] if types is None else embedding[2][types])
    width = hidden.shape[1]
    size = width // heads
    hidden = functional.layer_norm(hidden, [width], embedding[3], embedding[4], eps)
    # One padded view for every layer: each layer writes the real tokens' slots, the padding stays
    # zero (masked keys must hold finite values), so it is cleared once, not once per layer.
    padded = hidden.new_zeros(batch * longest, 3 * width)
    last = len(layers) - 1
    for index in range(len(layers)):
        weights = layers[index]
        padded[slots] = functional.linear(hidden, weights[0], weights[1])  # query, key, value of each token
        split = padded.view(batch, longest, 3, heads, size).permute(2, 0, 3, 1, 4)
        if index == last and not mean:
            # CLS pooling reads one token per text: the last layer needs every key and value, but
            # only the CLS tokens' queries and the rest of the layer for those rows (the same
            # arithmetic for them; about a ninth of a 6-layer model's work saved).
            context = functional.scaled_dot_product_attention(split[0][:, :, :1], split[1], split[2], attn_mask=key_mask)
            context = context.transpose(1, 2).reshape(batch, width)
            hidden = hidden[starts]
        else:
            context = functional.scaled_dot_product_attention(split[0], split[1], split[2], attn_mask=key_mask)
            context = context.transpose(1, 2).reshape(batch * longest, width)[slots]
        hidden = functional.layer_norm(
            functional.linear(context, weights[2], weights[3]) + hidden, [width], weights[4], weights[5], eps
        )
        inner = functional.gelu(functional.linear(hidden, weights[6], weights[7]))
        hidden = functional.layer_norm(
            functional.linear(inner, weights[8], weights[9]) + hidden, [width], weights[10], weights[11], eps
        )

    if mean:
        sums = hidden.new_zeros(batch, width).index_add_(0, owners, hidden)
        sentences = sums / lengths.to(hidden.dtype)[:, None]
    elif len(layers) > 0:
        sentences = hidden  # the CLS rows already (the last layer kept only them)
    else:
        sentences = hidden[starts]
    if len(head) == 4:
        sentences = functional.linear(torch.tanh(functional.linear(sentences, head[0], head[1])), head[2], head[3])
    if normalize:
        sentences = functional.normalize(sentences, p=2.0, dim=1)
    return sentences
