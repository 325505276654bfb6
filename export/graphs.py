"""The three graphs: their input/output names and dynamic axes, and the modules that are traced into them.

    encoder_model.onnx             input_ids, attention_mask -> last_hidden_state
    decoder_model.onnx             first step: input_ids, encoder_attention_mask, encoder_hidden_states
                                   -> logits, present.{i}.decoder.key|value, present.{i}.encoder.key|value
    decoder_with_past_model.onnx   new tokens on the cache: input_ids (B * beams, n), encoder_attention_mask (B, L),
                                   past_key_values.{i}.decoder.key|value (B * beams, ...),
                                   past_key_values.{i}.encoder.key|value (B, ...: one row per input, shared by its
                                   beams; rows repeated per beam work too)
                                   -> logits (B * beams, n, vocab), present.{i}.decoder.key|value (past + n
                                   positions; cross-attention K/V: the first step's)

The with-past graph takes any number n of new tokens, causal among themselves and over the past: n = 1 is a step of
greedy or beam search, n > 1 the verification of a draft (`export/runtime/assisted.py`). Exports made before it took
one token (input_ids (B * beams, 1)); `OnnxT5.multi_token_steps` tells them apart.

Names are optimum's. The modules call `T5ForConditionalGeneration.forward` (output scaling before `lm_head` is the
model's own, `scale_decoder_outputs`); they do not re-implement it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from export.layout import CROSS_KV, DECODER, DECODER_MERGED, DECODER_WITH_PAST, ENCODER, USE_CACHE_BRANCH

INPUT_BATCH = "encoder_batch_size"  # the with-past graph's encoder-side batch (inputs, not beams)


@dataclass(frozen=True)
class GraphSpec:
    inputs: dict[str, dict[int, str]]  # name -> dynamic axes, in the order the wrapper's forward takes them
    outputs: dict[str, dict[int, str]]  # name -> dynamic axes, in the order the wrapper returns them


def graph_specs(num_decoder_layers: int) -> dict[str, GraphSpec]:
    """Input/output names (optimum's) and dynamic axes of each graph for a decoder of `num_decoder_layers` layers."""
    batch, enc, dec, past = "batch_size", "encoder_sequence_length", "decoder_sequence_length", "past_sequence_length"

    def kv(prefix: str, kinds: tuple[str, ...], length: str, inputs: str = batch) -> dict[str, dict[int, str]]:
        return {f"{prefix}.{i}.{kind}.{kv}": {0: inputs if kind == "encoder" else batch,
                                              2: enc if kind == "encoder" else length}
                for i in range(num_decoder_layers) for kind in kinds for kv in ("key", "value")}

    specs = {
        ENCODER: GraphSpec(inputs={"input_ids": {0: batch, 1: enc}, "attention_mask": {0: batch, 1: enc}},
                           outputs={"last_hidden_state": {0: batch, 1: enc}}),
        DECODER: GraphSpec(inputs={"input_ids": {0: batch, 1: dec}, "encoder_attention_mask": {0: batch, 1: enc},
                                   "encoder_hidden_states": {0: batch, 1: enc}},
                           outputs={"logits": {0: batch, 1: dec}, **kv("present", ("decoder", "encoder"), dec)}),
        # any number of new tokens: traced with several (`export_graphs`), as a length-1 query would bake in "no
        # causal mask". The encoder side (mask, cross-attention K/V) has one row per input, the decoder side one per
        # sequence: beam search's beams of an input share its rows (`SharedCrossAttention`); without beams both
        # batches agree.
        DECODER_WITH_PAST: GraphSpec(inputs={"input_ids": {0: batch, 1: dec},
                                             "encoder_attention_mask": {0: INPUT_BATCH, 1: enc},
                                             **kv("past_key_values", ("decoder", "encoder"), past, INPUT_BATCH)},
                                     outputs={"logits": {0: batch, 1: dec},
                                              **kv("present", ("decoder",), f"{past} + {dec}")}),
    }
    # both decoders as the branches of one `If` (`export.merge`), optimum's names: the first step's outputs
    first, with_past = specs[DECODER], specs[DECODER_WITH_PAST]
    specs[DECODER_MERGED] = GraphSpec(inputs={**first.inputs, **with_past.inputs, USE_CACHE_BRANCH: {}},
                                      outputs=dict(first.outputs))
    # the first step's cross-attention K/V alone (`export.cross_kv`), cut out of the first-step graph
    specs[CROSS_KV] = GraphSpec(inputs={"encoder_hidden_states": first.inputs["encoder_hidden_states"]},
                                outputs={name: axes for name, axes in first.outputs.items() if ".encoder." in name})
    return specs


def build_cache(self_kv: list[tuple[torch.Tensor, torch.Tensor]],
                cross_kv: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
    """The transformers 5.x cache object that T5's decoder takes as `cache=`, rebuilt from flat tensors."""
    from transformers import DynamicCache, EncoderDecoderCache

    if not self_kv:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())
    return EncoderDecoderCache(DynamicCache(self_kv), DynamicCache(cross_kv))  # filled cross K/V: reused as they are


class EncoderGraph(nn.Module):
    def __init__(self, model: Any):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class DecoderGraph(nn.Module):
    """First decoder step: logits and the whole cache (self-attention and cross-attention K/V) as flat tensors."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(encoder_outputs=(encoder_hidden_states,), attention_mask=encoder_attention_mask,
                         decoder_input_ids=input_ids, cache=build_cache([], []), use_cache=True)
        flat = [out.logits]
        for own, cross in zip(out.cache.self_attention_cache.layers, out.cache.cross_attention_cache.layers,
                              strict=True):
            flat += [own.keys, own.values, cross.keys, cross.values]
        return tuple(flat)


class DecoderWithPastGraph(nn.Module):
    """New decoder tokens on top of the cache: their logits and the self-attention K/V grown by as many positions."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, encoder_attention_mask: torch.Tensor,
                *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        self_kv = [(past[i], past[i + 1]) for i in range(0, len(past), 4)]
        cross_kv = [(past[i + 2], past[i + 3]) for i in range(0, len(past), 4)]
        # The cross-attention reads its K/V from the cache; the encoder states only pass their batch, length and dtype
        # to the mask code. Width 1, not d_model: an expanded (B, L, d_model) tensor was computed at every step.
        shape_only = encoder_attention_mask[:, :, None].to(past[0].dtype)
        out = self.model(encoder_outputs=(shape_only,), attention_mask=encoder_attention_mask,
                         decoder_input_ids=input_ids, cache=build_cache(self_kv, cross_kv), use_cache=True)
        flat = [out.logits]
        for own in out.cache.self_attention_cache.layers:
            flat += [own.keys, own.values]
        return tuple(flat)
