"""Tracing a model into the three ONNX graphs with `torch.onnx.export` (TorchScript), on an example batch."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from export.cross_attention import shared_cross_attention
from export.fuse_attention import fuse_attention
from export.graphs import DecoderGraph, DecoderWithPastGraph, EncoderGraph, GraphSpec, graph_specs
from export.layout import DECODER, DECODER_WITH_PAST, ENCODER
from export.position_table import bias_table, encoder_bias_table, read_bias_from_table, read_encoder_bias_from_table
from export.skip_norm import fuse_skip_norms
from export.static_shapes import static_reshapes
from export.surgery import drop_single_input_concats
from export.weights import attach_weights

DEFAULT_OPSET = 17  # T5's causal mask needs aten::triu (opset >= 14); 17 adds LayerNormalization, runs on ORT >= 1.11
MIN_OPSET = 14
# the newest opset the TorchScript exporter writes (torch's constant; a newer one fails deep inside the trace)
MAX_OPSET: int = getattr(getattr(torch.onnx, "_constants", None), "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20)


def example_batch(config: Any, enc_lengths: tuple[int, ...], dec_length: int, seed: int) -> dict[str, np.ndarray]:
    """Padded encoder ids and mask, and decoder ids starting with the start token; ids avoid pad and EOS (0, 1)."""
    rng = np.random.default_rng(seed)
    batch, enc_len = len(enc_lengths), max(enc_lengths)
    mask = (np.arange(enc_len)[None, :] < np.asarray(enc_lengths)[:, None]).astype(np.int64)
    input_ids = np.where(mask == 1, rng.integers(2, config.vocab_size, (batch, enc_len)), config.pad_token_id or 0)
    decoder_ids = rng.integers(2, config.vocab_size, (batch, dec_length))
    start = config.decoder_start_token_id
    decoder_ids[:, 0] = start if start is not None else (config.pad_token_id or 0)
    return {"input_ids": input_ids.astype(np.int64), "attention_mask": mask, "decoder_input_ids": decoder_ids}


@contextmanager
def _weights_as_inputs(module: nn.Module, inputs: int) -> Iterator[tuple[list[str], tuple[torch.Tensor, ...]]]:
    """For the duration: every parameter of `module` a plain tensor attribute (the same values, nothing copied), and
    its forward one that takes those tensors after its `inputs` own inputs; yields their names and the tensors.

    torch's TorchScript exporter hands the parameters it finds to its ONNX shape inference as constants, which copies
    them: tracing mt5-small's first-step decoder raised the peak by 1.6 GB, about 2.7 times that graph's weights, on
    top of the model. Given as inputs, the weights are values the trace reads, as it reads the token ids, and nothing
    is copied. The graph is the one the parameters give, node names included (compared on a t5-small-shaped decoder),
    except that torch no longer merges parameters that hold equal values (the layer norms of a fresh model, all ones).
    The inputs are named after the parameters, as `export_params=False` names them.
    """
    names, tensors, by_id = [], [], {}
    for name, param in module.named_parameters():  # a tied weight once, under its first name
        names.append(name)
        tensors.append(param.detach())
        by_id[id(param)] = tensors[-1]
    swapped = [(owner, attr, param) for owner in module.modules() for attr, param in owner._parameters.items()
               if param is not None]
    forward = module.forward
    try:
        for owner, attr, param in swapped:
            del owner._parameters[attr]
            setattr(owner, attr, by_id[id(param)])
        module.forward = lambda *args: forward(*args[:inputs])
        yield names, tuple(tensors)
    finally:
        del module.forward
        for owner, attr, param in swapped:
            if attr in owner.__dict__:
                delattr(owner, attr)
            owner._parameters[attr] = param


def _torch_export(module: nn.Module, args: tuple[torch.Tensor, ...], spec: GraphSpec, path: Path, opset: int,
                  fused_attention: bool) -> None:
    """Trace `module` into the graph at `path`, its weights then written into `path`'s data file (`export.weights`);
    its Reshape targets made static and, with `fused_attention`, its attentions fused (`export.fuse_attention`)."""
    with warnings.catch_warnings():  # scoped to the export; the validation that follows is what judges the graphs
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # one per Python-side shape use in transformers
        # The TorchScript exporter on purpose (the dynamo exporter is the default): its decoders give lm_head an
        # initializer of its own, so `quantize` can make the token-embedding lookups int8 without touching lm_head.
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)  # inside that exporter
        # the mask code indexes with aranges (never negative), the case this warning is about
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing", UserWarning)
        # the weights are inputs named after the parameters (`_weights_as_inputs`), so no constant folding either:
        # torch would fold them into copies it then leaves out; `attach_weights` does the one fold that matters
        with _weights_as_inputs(module.eval(), len(args)) as (names, weights):
            torch.onnx.export(module, (*args, *weights), str(path), dynamo=False, opset_version=opset,
                              input_names=[*spec.inputs, *names], output_names=list(spec.outputs),
                              dynamic_axes={**spec.inputs, **spec.outputs}, export_params=False,
                              do_constant_folding=False)
    attach_weights(path, module)
    drop_single_input_concats(path)
    static_reshapes(path)
    if fused_attention:  # onnxruntime's contrib ops allowed
        fuse_attention(path)
        fuse_skip_norms(path)


def export_graphs(model: Any, folder: Path, opset: int = DEFAULT_OPSET, fused_attention: bool = True
                  ) -> dict[str, GraphSpec]:
    """Write the three fp32 graphs of `model` into `folder`, each with its data file (no validation; `export`
    validates). `fused_attention`: each attention as onnxruntime's MultiHeadAttention; False keeps standard ops."""
    specs = graph_specs(model.config.num_decoder_layers)
    # Both decoder examples must have more than one decoder token, or the trace bakes in "no causal mask": 3 for the
    # first step, then 3 new ones on its cache for the with-past graph (verifying a draft feeds several).
    ex = {k: torch.from_numpy(v) for k, v in example_batch(model.config, (6, 4), dec_length=6, seed=0).items()}
    first_ids, new_ids = ex["decoder_input_ids"][:, :3], ex["decoder_input_ids"][:, 3:]
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ex["input_ids"], attention_mask=ex["attention_mask"]).last_hidden_state
        first = DecoderGraph(model).eval()(first_ids, ex["attention_mask"], hidden)
    past = list(first[1:])  # per layer: self keys, self values, cross keys, cross values (the graphs' order)
    _torch_export(EncoderGraph(model), (ex["input_ids"], ex["attention_mask"]), specs[ENCODER], folder / ENCODER, opset,
                  fused_attention)
    _torch_export(DecoderGraph(model), (first_ids, ex["attention_mask"], hidden), specs[DECODER],
                  folder / DECODER, opset, fused_attention)
    # traced with two beams per input, so that nothing in the graph assumes as many sequences as inputs
    beams = [t if k % 4 >= 2 else t.repeat_interleave(2, dim=0) for k, t in enumerate(past)]  # self K/V per beam
    with shared_cross_attention(model):
        _torch_export(DecoderWithPastGraph(model), (new_ids.repeat_interleave(2, dim=0),
                                                    ex["attention_mask"], *beams),
                      specs[DECODER_WITH_PAST], folder / DECODER_WITH_PAST, opset, fused_attention)
    if fused_attention:  # the self-attention biases read from tables (`export.position_table`)
        read_bias_from_table(folder / DECODER_WITH_PAST, bias_table(model))
        read_encoder_bias_from_table(folder / ENCODER, encoder_bias_table(model))
    return specs
