"""int8 graphs beside the fp32 ones (dynamic quantization), and how closely a quantized graph's tokens follow the fp32
graphs' (int8 here, 4-bit in `export.int4`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.dynamic_int8 import quantize_graph
from export.errors import ExportError
from export.layout import GRAPHS, quantized_name
from export.runtime import OnnxT5
from export.trace import example_batch
from export.validate import Validation

INT8_OPS = ("MatMul", "Gather")  # what --int8 quantizes (`quantize`), recorded in export_meta.json as it ran
CHECK_NEW_TOKENS = 16  # greedy tokens compared between the quantized and the fp32 graphs on the validation batch


def excluded_nodes(path: Path, keep_fp32: tuple[str, ...], bias_gathers: bool = True) -> list[str]:
    """MatMul nodes whose module path (TorchScript names them /decoder/block.0/.../wo/MatMul) holds a kept name, and
    (`bias_gathers`) the relative-attention-bias Gathers."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return [node.name for node in graph.node
            if (node.op_type == "MatMul" and any(part in keep_fp32 for part in node.name.split("/")))
            or (bias_gathers and node.op_type == "Gather" and "relative_attention_bias" in node.name.split("/"))]


def quantize(folder: Path, keep_fp32: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Write `*_quantized.onnx` beside each graph: dynamic int8 MatMuls and token-embedding Gathers; the excluded
    node names per graph.

    The Gathers too: each graph otherwise holds an fp32 copy of the vocabulary x d_model table. Safe here because the
    TorchScript decoders give `lm_head` its own initializer; on the dynamo export the tied table is shared, and
    quantizing its Gather made `lm_head` dequantize the whole matrix every step. The 32 x heads
    relative-attention-bias Gathers stay fp32. `keep_fp32` names modules whose MatMuls stay fp32 (e.g. lm_head, wo).
    Each int8 graph gets a data file of its own, as the fp32 ones have. The graphs are those onnxruntime's
    `quantize_dynamic` writes, written a weight at a time (`export.dynamic_int8`).
    """
    excluded = {}
    for graph in GRAPHS:
        excluded[graph] = excluded_nodes(folder / graph, keep_fp32)
        quantize_graph(folder / graph, folder / quantized_name(graph), INT8_OPS, exclude=excluded[graph])
    for name in keep_fp32:
        if not any(name in node.split("/") for nodes in excluded.values() for node in nodes):
            raise ExportError(f"--int8-keep-fp32 names {name!r}, but no MatMul node belongs to a module of that name "
                              "(examples: lm_head, wo, wi, q, k, v, o).")
    return excluded


def agreement(folder: Path, check: Validation, model_config: Any, quantized: str = "int8") -> dict[str, float | int]:
    """Greedy tokens of the `quantized` graphs ("int8", "int4") against the fp32 graphs on the validation batch (EOS
    suppressed)."""
    ex = example_batch(model_config, check.enc_lengths, 1, check.seed)
    ids, mask = ex["input_ids"], ex["attention_mask"]
    kwargs = {"max_new_tokens": CHECK_NEW_TOKENS, "min_new_tokens": CHECK_NEW_TOKENS, "num_beams": 1,
              "do_sample": False}
    tokens, first = [], []
    for kind in (False, quantized):  # one at a time: a large model's fp32 and quantized graphs need not fit together
        rt = OnnxT5.from_staged(folder, quantized=kind)  # export_meta.json comes later
        tokens.append(rt.generate(ids, mask, **kwargs)[:, 1:])
        first.append(rt.first_step(ex["decoder_input_ids"], mask, rt.encode(ids, mask))[0])
        del rt
    fp32, low = tokens
    return {"greedy_token_agreement": float(np.mean(fp32 == low)),
            "greedy_sequence_agreement": float(np.mean(np.all(fp32 == low, axis=1))),
            "first_step_logits_max_abs_diff": float(np.max(np.abs(first[0] - first[1]))),
            "new_tokens": CHECK_NEW_TOKENS, "batch": len(check.enc_lengths)}
