"""The with-past graph's cross-attention: the beams of an input read that input's one row of cached K/V."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn


class SharedCrossAttention(nn.Module):
    """T5's cross-attention for decoder steps on a cache, reading K/V cached once per input instead of once per beam.

    The query rows are the beams of each input side by side (batch * beams, beam search's layout), each with the call's
    new tokens (one per step, several when a draft is verified); the cached K/V and the mask have one row per input:
    the beams' new tokens of an input become that input's query positions (beams * new tokens of them), so the K/V
    are never repeated (a beam-times smaller cache). Cross-attention has no causal mask, so every query position reads
    the same encoder positions. Without beams (as many queries as inputs, as optimum feeds the graph) it is
    T5's attention. Written out here, unlike the rest of the graphs, because no transformers API groups queries per
    cache row; the same arithmetic as `T5Attention` (no 1/sqrt(d) scaling; no position bias in cross-attention, T5
    adds zeros), and `validate` compares the graph with the unmodified model on repeated K/V.
    """

    def __init__(self, attention: Any):
        super().__init__()
        self.attention = attention  # transformers' T5Attention

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None = None,
                key_value_states: torch.Tensor | None = None, position_bias: torch.Tensor | None = None,
                cache: Any = None, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None, None]:
        att = self.attention
        layer = cache.cross_attention_cache.layers[att.layer_idx]
        keys, values = layer.keys, layer.values  # (inputs, heads, encoder length, d_kv)
        inputs, heads, d_kv = keys.shape[0], att.n_heads, att.key_value_proj_dim
        rows, new = hidden_states.shape[0], hidden_states.shape[1]
        # (inputs, heads, beams * new tokens, d_kv): the rows of an input's beams are adjacent, their tokens in order
        query = att.q(hidden_states).view(inputs, -1, heads, d_kv).transpose(1, 2)
        scores = torch.matmul(query, keys.transpose(2, 3)) * att.scaling
        if mask is not None:  # (inputs, 1, 1 or new tokens, encoder length): the same row for every query position
            mask = mask[:, :, :1, :]
        if mask is not None and mask.dtype == torch.bool:  # sdpa's mask, True: keep
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        elif mask is not None:  # eager's additive mask
            scores = scores + mask
        weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.matmul(weights, values).transpose(1, 2).reshape(rows, new, att.inner_dim)
        return att.o(out), position_bias, None


@contextmanager
def shared_cross_attention(model: Any) -> Iterator[Any]:
    """`model`'s decoder cross-attentions replaced by `SharedCrossAttention` for the duration (the trace)."""
    layers = [block.layer[1] for block in model.get_decoder().block]
    originals = [layer.EncDecAttention for layer in layers]
    try:
        for layer, attention in zip(layers, originals, strict=True):
            layer.EncDecAttention = SharedCrossAttention(attention)
        yield model
    finally:
        for layer, attention in zip(layers, originals, strict=True):
            layer.EncDecAttention = attention
