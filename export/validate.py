"""The check an export must pass before it is kept: each graph in onnxruntime against the model in PyTorch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from export.errors import ExportError
from export.graphs import GraphSpec, build_cache
from export.layout import CROSS_KV, DECODER, DECODER_MERGED, DECODER_WITH_PAST, ENCODER
from export.runtime.first_step import FirstStep
from export.runtime.merged import Branch
from export.runtime.sessions import session_options
from export.trace import example_batch

# An output passes when max |onnxruntime - PyTorch| <= atol + rtol * max |PyTorch output|. fp32 rounding grows with the
# magnitude of what is summed, and onnxruntime's fused kernels sum in another order than PyTorch, so the noise of a
# correct export scales with its outputs: small on logits of a few units, up to a few 1e-3 on logits in the tens (real
# t5-large exports differ from PyTorch by up to 3.3e-3: huggingface/optimum issue 449). A wrong graph (a missing causal
# mask, a missing or extra d_model ** -0.5, a stale cache) moves outputs by a sizeable fraction of their range,
# orders of magnitude above either term.
ATOL = 1e-4  # the floor, for outputs near zero
RTOL = 2e-4  # of the largest |output|: admits the noise of large logits with room, still 1/5000 of their range


@dataclass
class Validation:
    """Settings of the check against PyTorch: a padded batch, a first step of several tokens, then steps with past."""

    enc_lengths: tuple[int, ...] = (11, 7, 3)  # batch of 3, two rows padded
    first_decoder_length: int = 4  # start token + 3: the first-step graph must apply its causal mask
    past_steps: int = 3  # decoder_with_past runs one token at past lengths 4, 5, 6
    new_tokens: int = 3  # then this many at once (a draft's verification), at past length 7
    beams: int = 3  # then with this many sequences per input (beam search's layout), 1 and new_tokens tokens
    atol: float = ATOL  # tolerance of each output: atol + rtol * max |PyTorch output| (see ATOL, RTOL)
    rtol: float = RTOL
    seed: int = 1234

    def __post_init__(self) -> None:
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
                raise ExportError(f"Validation {name}={value!r}: must be a finite number >= 0 (--{name}).")

    def tolerance(self, reference: np.ndarray) -> float:
        """The largest max |diff| an output whose PyTorch value is `reference` may show."""
        scale = float(np.max(np.abs(reference))) if reference.size else 0.0
        return self.atol + self.rtol * scale


@dataclass
class Case:
    """One call of a graph and what PyTorch gives for it: the graph (its spec's name), the inputs, the outputs in the
    graph's order, and where in the check it is (for the messages)."""

    graph: str
    feed: dict[str, np.ndarray]
    want: list[np.ndarray]
    where: str


def _compare(graph: str, names: list[str], got: list[np.ndarray], want: list[np.ndarray], check: Validation,
             diffs: dict[str, dict[str, float]], where: str) -> None:
    """Record the max |diff| of each output of `graph` in `diffs`; ExportError for a shape or a diff out of bounds."""
    for name, g, ref in zip(names, got, want, strict=True):
        if g.shape != ref.shape:
            raise ExportError(f"{graph}: output {name!r} has shape {list(g.shape)} in onnxruntime but "
                              f"{list(ref.shape)} in PyTorch ({where}). The export is wrong; nothing was written.")
        diff = float(np.max(np.abs(g - ref))) if g.size else 0.0
        tol = check.tolerance(ref)
        diffs.setdefault(graph, {})[name] = max(diff, diffs.get(graph, {}).get(name, 0.0))
        if not diff <= tol:  # also catches NaN
            scale = float(np.max(np.abs(ref))) if ref.size else 0.0
            raise ExportError(
                f"{graph}: output {name!r} differs from PyTorch by {diff:.3g} (max |diff|) {where}, above its "
                f"tolerance {tol:.3g} (atol {check.atol:g} + rtol {check.rtol:g} x max |PyTorch {name}| "
                f"{scale:.3g}). The float rounding of a correct export stays within that and a wrong graph does not, "
                "so nothing was written. If this model's outputs are known to be noisier, allow more with "
                "`python -m export --atol A --rtol R`.")


def _session(folder: Path, file: str, specs: dict[str, GraphSpec], graph: str | None = None) -> ort.InferenceSession:
    """A session on one graph (`file`, of the spec `graph`, by default the file's), with the options the runtime serves
    with, checked to have the declared inputs and outputs. Sessions are opened one at a time: a large model's graphs
    need not fit in memory together."""
    graph = graph or file
    sess = ort.InferenceSession(str(folder / file), session_options(), providers=["CPUExecutionProvider"])
    names = ([i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()])
    if names != (list(specs[graph].inputs), list(specs[graph].outputs)):
        raise ExportError(f"{file}: inputs/outputs {names} differ from the declared {list(specs[graph].inputs)} "
                          f"-> {list(specs[graph].outputs)}. The export is wrong; nothing was written.")
    return sess


def _numpy(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    return [t.detach().float().numpy().copy() for t in tensors]


def reference(model: Any, check: Validation) -> list[Case]:
    """What the graphs must compute, from `model` in PyTorch: the encoder, a first decoder step, then steps on the
    cache (one token per call, then several at once, then with several beams per input).

    Computed before any graph runs, so that the export can free the torch weights before onnxruntime loads a graph:
    the two never hold memory together. Every call gets PyTorch's inputs (its encoder output, its cache), so a
    difference points at one graph."""
    n_layers = model.config.num_decoder_layers
    np_ = example_batch(model.config, check.enc_lengths, check.first_decoder_length + check.past_steps
                       + check.new_tokens, check.seed)
    ids, mask, dec = (torch.from_numpy(np_[k]) for k in ("input_ids", "attention_mask", "decoder_input_ids"))
    with torch.no_grad():
        hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
        cases = [Case(ENCODER, {"input_ids": np_["input_ids"], "attention_mask": np_["attention_mask"]},
                      _numpy([hidden]), "on the padded validation batch")]
        first = dec[:, :check.first_decoder_length]
        out = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=first, use_cache=True)
        cache = out.cache
        want = [out.logits]
        for i in range(n_layers):
            own, cross = cache.self_attention_cache.layers[i], cache.cross_attention_cache.layers[i]
            want += [own.keys, own.values, cross.keys, cross.values]
        cases.append(Case(DECODER, {"input_ids": first.numpy(), "encoder_attention_mask": np_["attention_mask"],
                                    "encoder_hidden_states": hidden.numpy()}, _numpy(want),
                          f"at the first step with {check.first_decoder_length} decoder tokens"))
        # one token per call (greedy and beam steps), then several at once (a draft's verification: causal among
        # the new tokens and over the past)
        position = check.first_decoder_length
        for count in [1] * check.past_steps + [check.new_tokens]:
            tokens = dec[:, position:position + count]
            position += count
            case, cache = _with_past(model, hidden, mask, tokens, cache, beams=1)
            cases.append(case)
        # beam search's layout: sequences are the beams of each input, the encoder side stays one row per input;
        # PyTorch gets the encoder side repeated per beam, as transformers' beam search does
        rng = np.random.default_rng(check.seed + 1)
        for count in (1, check.new_tokens):
            tokens = torch.from_numpy(rng.integers(2, model.config.vocab_size, (len(check.enc_lengths) * check.beams,
                                                                                  count)))
            cases.append(_with_past(model, hidden, mask, tokens, cache, beams=check.beams)[0])
    return cases


def _with_past(model: Any, hidden: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor, cache: Any,
               beams: int) -> tuple[Case, Any]:
    """decoder_with_past's call on `tokens` (rows * beams, n) over PyTorch's `cache` (one row per input), and
    PyTorch's grown cache. With `beams` > 1 the graph gets the encoder side once per input, PyTorch gets everything
    repeated per beam."""
    n_layers = model.config.num_decoder_layers
    layers = cache.self_attention_cache.layers, cache.cross_attention_cache.layers
    feed = {"input_ids": tokens.numpy(), "encoder_attention_mask": mask.numpy()}
    for i in range(n_layers):
        for kind, layer, repeat in (("decoder", layers[0][i], beams), ("encoder", layers[1][i], 1)):
            feed[f"past_key_values.{i}.{kind}.key"] = layer.keys.repeat_interleave(repeat, dim=0).numpy().copy()
            feed[f"past_key_values.{i}.{kind}.value"] = layer.values.repeat_interleave(repeat, dim=0).numpy().copy()
    past_len = cache.get_seq_length()
    if beams > 1:
        cache = build_cache(*([(layer.keys.repeat_interleave(beams, dim=0),
                                layer.values.repeat_interleave(beams, dim=0)) for layer in kind] for kind in layers))
        hidden, mask = hidden.repeat_interleave(beams, dim=0), mask.repeat_interleave(beams, dim=0)
    out = model(encoder_outputs=(hidden,), attention_mask=mask, decoder_input_ids=tokens, cache=cache, use_cache=True)
    want = [out.logits]
    for own in out.cache.self_attention_cache.layers:
        want += [own.keys, own.values]
    where = f"with {tokens.shape[1]} new token(s) at past length {past_len}"
    if beams > 1:
        where += f", {beams} beams per input sharing its cross-attention K/V"
    return Case(DECODER_WITH_PAST, feed, _numpy(want), where), out.cache


def validate(cases: list[Case], folder: Path, specs: dict[str, GraphSpec], check: Validation,
             merged: str | None = None, cross_kv: str | None = None) -> dict[str, dict[str, float]]:
    """Run each graph in onnxruntime on the `cases` (`reference`); the max |diff| per graph and output.

    Raises ExportError naming the graph, the output and the difference when one exceeds the tolerance.
    `merged`: the file of a merged decoder (`export.merge`) to check instead, both branches on the same inputs as the
    two graphs (the encoder is not checked again). `cross_kv`: the file of a cross-attention K/V graph
    (`export.cross_kv`) to check instead, the first step alone, through it and the with-past graph as the runtime
    serves it (`FirstStep`).
    """
    diffs: dict[str, dict[str, float]] = {}
    if merged is None and cross_kv is None:
        case = next(c for c in cases if c.graph == ENCODER)
        got = _session(folder, ENCODER, specs).run(None, case.feed)
        _compare(ENCODER, list(specs[ENCODER].outputs), got, case.want, check, diffs, case.where)
    one = _session(folder, merged, specs, DECODER_MERGED) if merged else None
    labels = {g: f"{merged} ({g.removesuffix('.onnx')} branch)" if merged else g for g in (DECODER,
                                                                                        DECODER_WITH_PAST)}
    session: Any
    if cross_kv:
        labels[DECODER] = f"{cross_kv} + {DECODER_WITH_PAST} (first step)"
        session = FirstStep(_session(folder, cross_kv, specs, CROSS_KV), _session(folder, DECODER_WITH_PAST, specs))
    else:
        session = Branch(one, use_cache=False) if one else _session(folder, DECODER, specs)
    for case in (c for c in cases if c.graph == DECODER):
        _compare(labels[DECODER], list(specs[DECODER].outputs), session.run(None, case.feed), case.want, check,
                 diffs, case.where)
    if cross_kv:  # the steps on the cache are the with-past graph's, checked already
        return diffs
    del session
    with_past = Branch(one, use_cache=True) if one else _session(folder, DECODER_WITH_PAST, specs)
    for case in (c for c in cases if c.graph == DECODER_WITH_PAST):
        _compare(labels[DECODER_WITH_PAST], list(specs[DECODER_WITH_PAST].outputs), with_past.run(None, case.feed),
                 case.want, check, diffs, case.where)
    return diffs
