"""Export a T5-family model to ONNX as three graphs with a key/value cache, checked against PyTorch before it is kept.

    python -m export --model models/teacher --out runs/export/teacher             # fp32
    python -m export --model runs/distill/student --out runs/export/student --int8 --int8-keep-fp32 lm_head,wo

The folder follows optimum's layout and input/output names (so `ORTModelForSeq2SeqLM` and transformers.js load it):

    encoder_model.onnx             input_ids, attention_mask -> last_hidden_state
    decoder_model.onnx             first step: input_ids, encoder_attention_mask, encoder_hidden_states
                                   -> logits, present.{i}.decoder.key|value, present.{i}.encoder.key|value
    decoder_with_past_model.onnx   one token: input_ids (B * beams, 1), encoder_attention_mask (B, L),
                                   past_key_values.{i}.decoder.key|value (B * beams, ...),
                                   past_key_values.{i}.encoder.key|value (B, ...: one row per input, shared by its
                                   beams; rows repeated per beam work too)
                                   -> logits, present.{i}.decoder.key|value (cross-attention K/V: the first step's)
    *_quantized.onnx               with --int8: dynamic int8 MatMuls and embeddings (onnxruntime.quantization)
    config.json generation_config.json tokenizer files    what `OnnxT5` and transformers read
    export_meta.json               opset, versions, max |diff| against PyTorch per graph and output, sizes,
                                   int8 token agreement

Everything is written to a hidden folder next to `--out` and renamed into place only after onnxruntime matched PyTorch
on a padded batch (first decoder step with several tokens, then several steps with past), so a crash or a failed check
never leaves a folder that looks complete. Output scaling before `lm_head` is the model's own (`scale_decoder_outputs`):
the graphs call `T5ForConditionalGeneration.forward`, they do not re-implement it.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from export.runtime import (
    CROSS_KV_ROWS,
    DECODER,
    DECODER_WITH_PAST,
    ENCODER,
    GRAPHS,
    OnnxT5,
    quantized_name,
    source_fingerprint,
    source_id,
)

INPUT_BATCH = "encoder_batch_size"  # the with-past graph's encoder-side batch (inputs, not beams)
T5_FAMILY = ("t5", "mt5")  # model_type values whose checkpoints T5ForConditionalGeneration loads faithfully
DEFAULT_OPSET = 17  # T5's causal mask needs aten::triu (opset >= 14); 17 adds LayerNormalization, runs on ORT >= 1.11
ATOL_LOGITS = 1e-4  # fp32 logits; measured about 4e-6 on a padded batch (shared FACTS)
INT8_OPS = ("MatMul", "Gather")  # what --int8 quantizes (`quantize`), recorded in export_meta.json as it ran
INT8_CHECK_NEW_TOKENS = 16  # greedy tokens compared between the int8 and the fp32 graphs on the validation batch
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "spiece.model", "sentencepiece.bpe.model")


class ExportError(SystemExit):
    """An export that cannot be made or that failed its check; SystemExit so `python -m export` prints it cleanly."""


# ---- the three graphs, declared in one place: names and dynamic axes side by side ------------------------------------
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

    return {
        ENCODER: GraphSpec(inputs={"input_ids": {0: batch, 1: enc}, "attention_mask": {0: batch, 1: enc}},
                           outputs={"last_hidden_state": {0: batch, 1: enc}}),
        DECODER: GraphSpec(inputs={"input_ids": {0: batch, 1: dec}, "encoder_attention_mask": {0: batch, 1: enc},
                                   "encoder_hidden_states": {0: batch, 1: enc}},
                           outputs={"logits": {0: batch, 1: dec}, **kv("present", ("decoder", "encoder"), dec)}),
        # one new token per call: the trace bakes "no causal mask" for a length-1 query, so the length is not dynamic.
        # The encoder side (mask, cross-attention K/V) has one row per input, the decoder side one per sequence:
        # beam search's beams of an input share its rows (`SharedCrossAttention`); without beams both batches agree.
        DECODER_WITH_PAST: GraphSpec(inputs={"input_ids": {0: batch},
                                             "encoder_attention_mask": {0: INPUT_BATCH, 1: enc},
                                             **kv("past_key_values", ("decoder", "encoder"), past, INPUT_BATCH)},
                                     outputs={"logits": {0: batch}, **kv("present", ("decoder",), f"{past} + 1")}),
    }


def _cache(self_kv: list[tuple[torch.Tensor, torch.Tensor]], cross_kv: list[tuple[torch.Tensor, torch.Tensor]]):
    """The transformers 5.x cache object that T5's decoder takes as `cache=`, rebuilt from flat tensors."""
    from transformers import DynamicCache, EncoderDecoderCache

    if not self_kv:
        return EncoderDecoderCache(DynamicCache(), DynamicCache())
    return EncoderDecoderCache(DynamicCache(self_kv), DynamicCache(cross_kv))  # filled cross K/V: reused as they are


class SharedCrossAttention(nn.Module):
    """T5's cross-attention for one decoder step, reading K/V cached once per input instead of once per beam.

    The query rows are the beams of each input side by side (batch * beams, beam search's layout), the cached K/V and
    the mask have one row per input: the beams of an input become that input's query positions, so the K/V are never
    repeated (t5-small 6-2, batch 32 x beam 4 x 256 input tokens: 67 instead of 268 MB). Without beams (as many
    queries as inputs, as optimum feeds the graph) it is T5's attention. Written out here, unlike the rest of the
    graphs, because no transformers API groups queries per cache row; the same arithmetic as `T5Attention` (no
    1/sqrt(d) scaling; no position bias in cross-attention, T5 adds zeros), and `validate` compares the graph with
    the unmodified model on repeated K/V.
    """

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.attention = attention

    def forward(self, hidden_states, mask=None, key_value_states=None, position_bias=None, cache=None, **kwargs):
        att = self.attention
        layer = cache.cross_attention_cache.layers[att.layer_idx]
        keys, values = layer.keys, layer.values  # (inputs, heads, encoder length, d_kv)
        inputs, heads, d_kv = keys.shape[0], att.n_heads, att.key_value_proj_dim
        query = att.q(hidden_states).view(inputs, -1, heads, d_kv).transpose(1, 2)  # (inputs, heads, beams, d_kv)
        scores = torch.matmul(query, keys.transpose(2, 3)) * att.scaling
        if mask is not None and mask.dtype == torch.bool:  # (inputs, 1, 1, encoder length): sdpa's mask, True: keep
            scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
        elif mask is not None:  # eager's additive mask
            scores = scores + mask
        weights = nn.functional.softmax(scores.float(), dim=-1).type_as(scores)
        out = torch.matmul(weights, values).transpose(1, 2).reshape(hidden_states.shape[0], 1, att.inner_dim)
        return att.o(out), position_bias, None


@contextmanager
def shared_cross_attention(model):
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


class EncoderGraph(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.encoder = model.get_encoder()

    def forward(self, input_ids, attention_mask):
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


class DecoderGraph(nn.Module):
    """First decoder step: logits and the whole cache (self-attention and cross-attention K/V) as flat tensors."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, encoder_attention_mask, encoder_hidden_states):
        out = self.model(encoder_outputs=(encoder_hidden_states,), attention_mask=encoder_attention_mask,
                         decoder_input_ids=input_ids, cache=_cache([], []), use_cache=True)
        flat = [out.logits]
        for own, cross in zip(out.cache.self_attention_cache.layers, out.cache.cross_attention_cache.layers,
                              strict=True):
            flat += [own.keys, own.values, cross.keys, cross.values]
        return tuple(flat)


class DecoderWithPastGraph(nn.Module):
    """One decoder step on top of the cache: logits and the self-attention K/V grown by one position."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, encoder_attention_mask, *past):
        self_kv = [(past[i], past[i + 1]) for i in range(0, len(past), 4)]
        cross_kv = [(past[i + 2], past[i + 3]) for i in range(0, len(past), 4)]
        # The cross-attention reads its K/V from the cache; the encoder states only pass their batch, length and dtype
        # to the mask code. Width 1, not d_model: an expanded (B, L, d_model) tensor was computed at every step.
        shape_only = encoder_attention_mask[:, :, None].to(past[0].dtype)
        out = self.model(encoder_outputs=(shape_only,), attention_mask=encoder_attention_mask,
                         decoder_input_ids=input_ids, cache=_cache(self_kv, cross_kv), use_cache=True)
        flat = [out.logits]
        for own in out.cache.self_attention_cache.layers:
            flat += [own.keys, own.values]
        return tuple(flat)


# ---- loading ---------------------------------------------------------------------------------------------------------
def load_model(name_or_dir: str):
    """A T5-family model from a local folder or hub id, weights from safetensors only, in eval mode, fp32.

    The same checks as distill's `load_t5`, on purpose not imported from it: packages do not import each other.
    """
    from transformers import AutoConfig, T5ForConditionalGeneration

    local = Path(name_or_dir).expanduser()
    try:
        config = AutoConfig.from_pretrained(name_or_dir)
    except (OSError, ValueError) as err:
        if local.is_dir():
            raise ExportError(f"Could not read the model config in {local}: {err}") from err
        if str(name_or_dir).startswith((".", "/", "~")):
            raise ExportError(f"Model folder {local} does not exist.") from err
        raise ExportError(f"Could not load the model {name_or_dir!r}: it is not a local folder, and the Hugging Face "
                          f"hub did not serve it ({type(err).__name__}). The hub may be unreachable from this "
                          "machine; a local folder (e.g. models/teacher) works offline.") from err
    if config.model_type not in T5_FAMILY:
        raise ExportError(f"{name_or_dir} is a {config.model_type!r} model; the export handles T5-family models "
                          f"(model_type in {T5_FAMILY}: t5, t5 v1.1, flan-t5, mT5).")
    try:
        model = T5ForConditionalGeneration.from_pretrained(name_or_dir, config=config, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise ExportError(f"Could not load the weights of {name_or_dir} (model.safetensors is required; pickled "
                          f".bin weights are refused): {err}") from err
    return model.float().eval()


# ---- export ----------------------------------------------------------------------------------------------------------
def example_batch(config, enc_lengths: tuple[int, ...], dec_length: int, seed: int) -> dict[str, np.ndarray]:
    """Padded encoder ids and mask, and decoder ids starting with the start token; ids avoid pad and EOS (0, 1)."""
    rng = np.random.default_rng(seed)
    batch, enc_len = len(enc_lengths), max(enc_lengths)
    mask = (np.arange(enc_len)[None, :] < np.asarray(enc_lengths)[:, None]).astype(np.int64)
    input_ids = np.where(mask == 1, rng.integers(2, config.vocab_size, (batch, enc_len)), config.pad_token_id or 0)
    decoder_ids = rng.integers(2, config.vocab_size, (batch, dec_length))
    start = config.decoder_start_token_id
    decoder_ids[:, 0] = start if start is not None else (config.pad_token_id or 0)
    return {"input_ids": input_ids.astype(np.int64), "attention_mask": mask, "decoder_input_ids": decoder_ids}


def _torch_export(module: nn.Module, args: tuple, spec: GraphSpec, path: Path, opset: int) -> None:
    with warnings.catch_warnings():  # scoped to the export; the validation that follows is what judges the graphs
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # one per Python-side shape use in transformers
        # chosen on purpose (shared FACTS: TorchScript graphs int8-quantize well); the dynamo exporter is the default
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)  # inside that exporter
        # the mask code indexes with aranges (never negative), the case this warning is about
        warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing", UserWarning)
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=opset,
                          input_names=list(spec.inputs), output_names=list(spec.outputs),
                          dynamic_axes={**spec.inputs, **spec.outputs}, do_constant_folding=True)
    drop_single_input_concats(path)


def drop_single_input_concats(path: Path) -> int:
    """Rewire the graph at `path` around every Concat of one input (an identity that copies); how many were dropped.

    transformers' cache starts each layer empty and concatenates onto it; constant folding leaves `Concat(x)`, and
    onnxruntime runs it as a copy: the decoder with past copied every cross-attention K/V at every step (t5-small 6-2,
    batch 8 x beam 4, 64 input tokens: 16 MB per step). A Concat whose output is a graph output writes that output
    from its producer instead; one whose input is also a graph input or initializer becomes an Identity.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # external weights, if any, stay where they are
    graph = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return 0  # subgraphs can read outer names; T5's graphs have none, and this pass does not rename into them
    outputs = {o.name for o in graph.output}
    fixed = {i.name for i in graph.input} | {t.name for t in graph.initializer} | outputs
    dropped = 0
    for node in [n for n in graph.node if n.op_type == "Concat" and len(n.input) == 1]:
        src, dst = node.input[0], node.output[0]
        if dst in outputs and src in fixed:
            node.op_type = "Identity"
            del node.attribute[:]
            continue
        old, new = (src, dst) if dst in outputs else (dst, src)
        graph.node.remove(node)
        for other in graph.node:
            for names in (other.input, other.output):
                for k, name in enumerate(names):
                    if name == old:
                        names[k] = new
        for info in [v for v in graph.value_info if v.name == old]:
            graph.value_info.remove(info)
        dropped += 1
    if dropped:
        onnx.save(model, str(path))
    return dropped


def export_graphs(model, folder: Path, opset: int = DEFAULT_OPSET) -> dict[str, GraphSpec]:
    """Write the three fp32 graphs of `model` into `folder` (no validation; `export` validates)."""
    specs = graph_specs(model.config.num_decoder_layers)
    # The first-step example must have more than one decoder token, or the trace bakes in "no causal mask".
    ex = {k: torch.from_numpy(v) for k, v in example_batch(model.config, (6, 4), dec_length=3, seed=0).items()}
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ex["input_ids"], attention_mask=ex["attention_mask"]).last_hidden_state
        first = DecoderGraph(model).eval()(ex["decoder_input_ids"], ex["attention_mask"], hidden)
    past = list(first[1:])  # per layer: self keys, self values, cross keys, cross values (the graphs' order)
    _torch_export(EncoderGraph(model), (ex["input_ids"], ex["attention_mask"]), specs[ENCODER], folder / ENCODER, opset)
    _torch_export(DecoderGraph(model), (ex["decoder_input_ids"], ex["attention_mask"], hidden), specs[DECODER],
                  folder / DECODER, opset)
    # traced with two beams per input, so that nothing in the graph assumes as many sequences as inputs
    beams = [t if k % 4 >= 2 else t.repeat_interleave(2, dim=0) for k, t in enumerate(past)]  # self K/V per beam
    with shared_cross_attention(model):
        _torch_export(DecoderWithPastGraph(model), (ex["decoder_input_ids"][:, -1:].repeat_interleave(2, dim=0),
                                                    ex["attention_mask"], *beams),
                      specs[DECODER_WITH_PAST], folder / DECODER_WITH_PAST, opset)
    return specs


# ---- validation ------------------------------------------------------------------------------------------------------
@dataclass
class Validation:
    """Settings of the check against PyTorch: a padded batch, a first step of several tokens, then steps with past."""

    enc_lengths: tuple[int, ...] = (11, 7, 3)  # batch of 3, two rows padded
    first_decoder_length: int = 4  # start token + 3: the first-step graph must apply its causal mask
    past_steps: int = 3  # decoder_with_past runs at past lengths 4, 5, 6
    beams: int = 3  # then once with this many sequences per input (beam search's layout)
    atol: float = ATOL_LOGITS  # on logits; other outputs get atol * max(1, max |reference|)
    seed: int = 1234


def _compare(graph: str, names: list[str], got: list[np.ndarray], want: list[torch.Tensor], atol: float,
             diffs: dict[str, dict[str, float]], where: str) -> None:
    for name, g, w in zip(names, got, want, strict=True):
        w = w.detach().float().numpy()
        if g.shape != w.shape:
            raise ExportError(f"{graph}: output {name!r} has shape {list(g.shape)} in onnxruntime but {list(w.shape)} "
                              f"in PyTorch ({where}). The export is wrong; nothing was written.")
        diff = float(np.max(np.abs(g - w))) if g.size else 0.0
        tol = atol if name == "logits" else atol * max(1.0, float(np.max(np.abs(w))) if w.size else 1.0)
        diffs.setdefault(graph, {})[name] = max(diff, diffs.get(graph, {}).get(name, 0.0))
        if not diff <= tol:  # also catches NaN
            raise ExportError(f"{graph}: output {name!r} differs from PyTorch by {diff:.3g} (max |diff|, tolerance "
                              f"{tol:.3g}) {where}. The export is wrong; nothing was written.")


def validate(model, folder: Path, specs: dict[str, GraphSpec], check: Validation) -> dict[str, dict[str, float]]:
    """Run each graph in onnxruntime and `model` in PyTorch on the same inputs; the max |diff| per graph and output.

    Every graph gets PyTorch's inputs (the reference cache, not onnxruntime's), so a difference points at one graph.
    Raises ExportError naming the graph, the output and the difference when one exceeds the tolerance.
    """
    n_layers = model.config.num_decoder_layers
    np_ = example_batch(model.config, check.enc_lengths, check.first_decoder_length + check.past_steps, check.seed)
    ids, mask, dec = (torch.from_numpy(np_[k]) for k in ("input_ids", "attention_mask", "decoder_input_ids"))
    diffs: dict[str, dict[str, float]] = {}
    import onnxruntime as ort

    options = OnnxT5.session_options()  # validated with the options the runtime serves with
    sessions = {graph: ort.InferenceSession(str(folder / graph), options, providers=["CPUExecutionProvider"])
                for graph in GRAPHS}
    for graph, sess in sessions.items():
        names = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
        if names != (list(specs[graph].inputs), list(specs[graph].outputs)):
            raise ExportError(f"{graph}: inputs/outputs {names} differ from the declared {list(specs[graph].inputs)} "
                              f"-> {list(specs[graph].outputs)}. The export is wrong; nothing was written.")
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        got = sessions[ENCODER].run(None, {"input_ids": np_["input_ids"], "attention_mask": np_["attention_mask"]})
        _compare(ENCODER, ["last_hidden_state"], got, [hidden], check.atol, diffs, "on the padded validation batch")

        first = dec[:, :check.first_decoder_length]
        out = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=first, use_cache=True)
        cache = out.cache
        want = [out.logits]
        for i in range(n_layers):
            own, cross = cache.self_attention_cache.layers[i], cache.cross_attention_cache.layers[i]
            want += [own.keys, own.values, cross.keys, cross.values]
        got = sessions[DECODER].run(None, {"input_ids": first.numpy(), "encoder_attention_mask": np_["attention_mask"],
                                           "encoder_hidden_states": hidden.numpy()})
        _compare(DECODER, list(specs[DECODER].outputs), got, want, check.atol, diffs,
                 f"at the first step with {check.first_decoder_length} decoder tokens")

        for step in range(check.past_steps):
            feed = {"input_ids": dec[:, check.first_decoder_length + step:][:, :1].numpy(),
                    "encoder_attention_mask": np_["attention_mask"]}
            for i in range(n_layers):
                own, cross = cache.self_attention_cache.layers[i], cache.cross_attention_cache.layers[i]
                feed.update({f"past_key_values.{i}.decoder.key": own.keys.numpy().copy(),
                             f"past_key_values.{i}.decoder.value": own.values.numpy().copy(),
                             f"past_key_values.{i}.encoder.key": cross.keys.numpy().copy(),
                             f"past_key_values.{i}.encoder.value": cross.values.numpy().copy()})
            past_len = cache.get_seq_length()
            token = torch.from_numpy(feed["input_ids"])
            out = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=token, cache=cache,
                        use_cache=True)
            cache = out.cache
            want = [out.logits]
            for i in range(n_layers):
                own = cache.self_attention_cache.layers[i]
                want += [own.keys, own.values]
            got = sessions[DECODER_WITH_PAST].run(None, feed)
            _compare(DECODER_WITH_PAST, list(specs[DECODER_WITH_PAST].outputs), got, want, check.atol, diffs,
                     f"at past length {past_len}")

        # beam search's layout: sequences are the beams of each input, the encoder side stays one row per input;
        # PyTorch gets the encoder side repeated per beam, as transformers' beam search does
        rows = len(check.enc_lengths) * check.beams
        token = torch.from_numpy(np.random.default_rng(check.seed + 1).integers(2, model.config.vocab_size, (rows, 1)))
        layers = cache.self_attention_cache.layers, cache.cross_attention_cache.layers
        feed = {"input_ids": token.numpy(), "encoder_attention_mask": np_["attention_mask"]}
        for i in range(n_layers):
            for kind, layer, repeat in (("decoder", layers[0][i], check.beams), ("encoder", layers[1][i], 1)):
                feed[f"past_key_values.{i}.{kind}.key"] = layer.keys.repeat_interleave(repeat, dim=0).numpy()
                feed[f"past_key_values.{i}.{kind}.value"] = layer.values.repeat_interleave(repeat, dim=0).numpy()
        beam_cache = _cache(*([(layer.keys.repeat_interleave(check.beams, dim=0),
                                layer.values.repeat_interleave(check.beams, dim=0)) for layer in kind]
                              for kind in layers))
        out = model(encoder_outputs=(hidden.repeat_interleave(check.beams, dim=0),),
                    attention_mask=mask.repeat_interleave(check.beams, dim=0), decoder_input_ids=token,
                    cache=beam_cache, use_cache=True)
        want = [out.logits]
        for own in out.cache.self_attention_cache.layers:
            want += [own.keys, own.values]
        got = sessions[DECODER_WITH_PAST].run(None, feed)
        _compare(DECODER_WITH_PAST, list(specs[DECODER_WITH_PAST].outputs), got, want, check.atol, diffs,
                 f"with {check.beams} beams per input sharing its cross-attention K/V")
    return diffs


# ---- int8 ------------------------------------------------------------------------------------------------------------
def _excluded_nodes(path: Path, keep_fp32: tuple[str, ...]) -> list[str]:
    """MatMul nodes whose module path (TorchScript names them /decoder/block.0/.../wo/MatMul) holds a kept name."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node
            if (node.op_type == "MatMul" and any(part in keep_fp32 for part in node.name.split("/")))
            or (node.op_type == "Gather" and "relative_attention_bias" in node.name.split("/"))]


def quantize(folder: Path, keep_fp32: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Write `*_quantized.onnx` beside each graph: dynamic int8 MatMuls and token-embedding Gathers; the excluded
    node names per graph.

    The Gathers too: each graph otherwise holds an fp32 copy of the 32k x d_model table (t5-small: 65.8 MB, three
    times). Safe here because the TorchScript decoders give `lm_head` its own initializer; on the dynamo export the
    tied table is shared, and quantizing its Gather made `lm_head` dequantize the whole matrix every step (2.7x
    slower, shared FACTS). The 32 x heads relative-attention-bias Gathers stay fp32. `keep_fp32` names modules whose
    MatMuls stay fp32 (e.g. lm_head, wo).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    excluded = {}
    for graph in GRAPHS:
        excluded[graph] = _excluded_nodes(folder / graph, keep_fp32)
        quantize_dynamic(folder / graph, folder / quantized_name(graph), op_types_to_quantize=list(INT8_OPS),
                         weight_type=QuantType.QInt8, nodes_to_exclude=excluded[graph] or None)
    for name in keep_fp32:
        if not any(name in node.split("/") for nodes in excluded.values() for node in nodes):
            raise ExportError(f"--int8-keep-fp32 names {name!r}, but no MatMul node belongs to a module of that name "
                              "(examples: lm_head, wo, wi, q, k, v, o).")
    return excluded


def int8_agreement(folder: Path, check: Validation, model_config) -> dict[str, float | int]:
    """Greedy tokens of the int8 graphs against the fp32 graphs on the validation batch (EOS suppressed)."""
    ex = example_batch(model_config, check.enc_lengths, 1, check.seed)
    ids, mask = ex["input_ids"], ex["attention_mask"]
    kwargs = {"max_new_tokens": INT8_CHECK_NEW_TOKENS, "min_new_tokens": INT8_CHECK_NEW_TOKENS, "num_beams": 1,
              "do_sample": False}
    runtimes = [OnnxT5.from_pretrained(folder, quantized=q) for q in (False, True)]
    fp32, int8 = (rt.generate(ids, mask, **kwargs)[:, 1:] for rt in runtimes)
    first = [rt._first_step(ex["decoder_input_ids"], mask, rt._encode(ids, mask))[0] for rt in runtimes]
    return {"greedy_token_agreement": float(np.mean(fp32 == int8)),
            "greedy_sequence_agreement": float(np.mean(np.all(fp32 == int8, axis=1))),
            "first_step_logits_max_abs_diff": float(np.max(np.abs(first[0] - first[1]))),
            "new_tokens": INT8_CHECK_NEW_TOKENS, "batch": len(check.enc_lengths)}


# ---- the whole export ------------------------------------------------------------------------------------------------
def _replace_dir(staged: Path, out: Path) -> None:
    """Rename the finished `staged` (a sibling of `out`) into place; an earlier export at `out` is replaced."""
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        old.rmdir()
        os.rename(out, old)
        os.rename(staged, out)
        shutil.rmtree(old)
    else:
        os.rename(staged, out)


def _copy_tokenizer(name_or_dir: str, staged: Path) -> list[str]:
    local = Path(name_or_dir).expanduser()
    if local.is_dir():
        copied = [name for name in TOKENIZER_FILES if (local / name).is_file()]
        for name in copied:
            shutil.copy2(local / name, staged / name)
        return copied
    from transformers import AutoTokenizer

    try:  # a hub id: the same loader as everywhere else; a repo without a tokenizer is allowed
        AutoTokenizer.from_pretrained(name_or_dir).save_pretrained(staged)
    except (OSError, ValueError):
        return []
    return sorted(p.name for p in staged.iterdir() if p.name in TOKENIZER_FILES)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def export(model_name_or_dir: str, out: Path | str, opset: int = DEFAULT_OPSET, int8: bool = False,
           int8_keep_fp32: tuple[str, ...] = (), check: Validation | None = None, command: str | None = None) -> Path:
    """Export, validate and (optionally) quantize `model_name_or_dir` into `out`; returns `out`.

    `command` is recorded in export_meta.json (the CLI passes its own command line).
    """
    out = Path(out).expanduser().resolve()
    check = check or Validation()
    if out.exists() and not (out / "export_meta.json").is_file():
        raise ExportError(f"{out} exists and is not an earlier export (no export_meta.json); it is left alone. "
                          "Choose a new folder for --out, or remove this one.")
    model = load_model(model_name_or_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp.", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        staged.mkdir()
        specs = export_graphs(model, staged, opset)
        diffs = validate(model, staged, specs, check)
        model.config.save_pretrained(staged)
        model.generation_config.save_pretrained(staged)
        tokenizer_files = _copy_tokenizer(model_name_or_dir, staged)
        int8_meta = None
        if int8:
            excluded = quantize(staged, tuple(int8_keep_fp32))
            int8_meta = {"op_types_to_quantize": list(INT8_OPS), "weight_type": "QInt8",
                         "keep_fp32": list(int8_keep_fp32), "excluded_nodes": excluded,
                         **int8_agreement(staged, check, model.config)}
        cfg = model.config
        meta = {
            "source": source_id(model_name_or_dir),
            "source_fingerprint": source_fingerprint(model_name_or_dir),
            "command": command,
            "opset": opset,
            "exporter": "torch.onnx.export(dynamo=False)",
            "versions": _versions(),
            "model": {k: getattr(cfg, k, None) for k in (
                "model_type", "num_layers", "num_decoder_layers", "d_model", "d_ff", "d_kv", "num_heads", "vocab_size",
                "feed_forward_proj", "tie_word_embeddings", "scale_decoder_outputs")}
            # transformers 5.x keeps tie_word_embeddings True for v1.1-style models; this says what the weights are
            | {"lm_head_is_shared_embedding": model.lm_head.weight is model.shared.weight},
            "validation": {"batch": len(check.enc_lengths), "encoder_lengths": list(check.enc_lengths),
                           "first_decoder_length": check.first_decoder_length, "past_steps": check.past_steps,
                           "atol_logits": check.atol, "max_abs_diff": diffs},
            "int8": int8_meta,
            CROSS_KV_ROWS: "input",  # `SharedCrossAttention`: beams share their input's cross-attention K/V
            "tokenizer_files": tokenizer_files,
            "file_bytes": {p.name: p.stat().st_size for p in sorted(staged.iterdir()) if p.suffix == ".onnx"},
        }
        (staged / "export_meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        _replace_dir(staged, out)
    return out
