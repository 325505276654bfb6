"""`decoder_with_past_one_row_quantized.onnx` (with --int8): the with-past graph for OnnxT5's one-row steps, its
MatMul weights as 8-bit blocks.

The int8 graphs' MatMuls are onnxruntime's DynamicQuantizeMatMul: one int8 scale per weight tensor, the activations
quantized per run. At one row (batch 1 greedy, one token a step) its kernel reads the weights well below the memory's
rate: mt5-small's 512 x 250,112 output projection at 1.32x the bandwidth probe's time, where fp32 runs at 1.12x
(`python -m bench.kernel_rate`). onnxruntime's MatMulNBits with 8 bits, symmetric blocks of `BLOCK_SIZE` weights along
K and accuracy level 4 (the activations quantized to int8 per block) read the same projection at 1.04x, and one
t5-base or mt5-small step took 0.94x / 0.85x the int8 graph's time; with 4 rows or more it was 1.2-1.9x slower
(docs/results.md, "The one-row int8 graph"). So the export writes this graph beside the int8 ones and OnnxT5 steps
one-row calls on it (`export.runtime.one_row`), every other call on the int8 with-past graph.

The graph is the fp32 with-past graph, its MatMuls that read one input fused (`export.fuse_matmuls`: a
self-attention's q, k and v as one) and its cross-attentions ungrouped (`export.fuse_attention.ungroup`: with one
input and one row, the Reshapes that group an input's beams are no-ops; t5-base's step 0.92x and 0.89x the time,
mt5-small's 0.90x), through the 4-bit path's quantizer (`export.int4.quantize_graph`) with 8 bits: the token
embeddings int8 as in the int8 graphs, the `keep_fp32` modules fp32 as --int8 keeps them. Blocks of 256 quantize
finer than one scale per tensor (a scale per 256 weights of a column) and cost 4 bytes per block (1.016 bytes a
weight). Its tokens are compared with the fp32 graphs' on each validation row alone (export_meta.json:
int8.one_row).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from export.fuse_attention import ungroup
from export.fuse_matmuls import fuse_shared_inputs
from export.int4 import quantize_graph
from export.layout import DECODER_WITH_PAST, ONE_ROW
from export.quantize import CHECK_NEW_TOKENS
from export.runtime import OnnxT5
from export.runtime.one_row import OneRow
from export.runtime.sessions import session_options
from export.surgery import drop_stale_value_info, remove_dead_nodes
from export.trace import example_batch
from export.validate import Validation

BITS = 8
# on mt5's projection at one row, blocks of 128 took 1.04x and blocks of 32 1.31x the time of these (docs/results.md)
BLOCK_SIZE = 256
SYMMETRIC = True  # int8 weights need no zero point: 127 levels either side of 0 leave little to gain from one


def _ungrouped(path: Path) -> None:
    """Rewrite the graph at `path` (its weights where they are) without its cross-attentions' grouping Reshapes and
    the shape arithmetic behind them: one input, one row, so they leave their tensors as they are."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    ungroup(model.graph)
    remove_dead_nodes(model.graph)
    drop_stale_value_info(model.graph)
    onnx.save_model(model, str(path))


def write_one_row(folder: Path, keep_fp32: tuple[str, ...]) -> dict[str, Any]:
    """Write ONE_ROW (and its data file) from the fp32 with-past graph in `folder`; what export_meta.json records of
    it, the token agreement aside."""
    work = folder / ".one-row"
    work.mkdir()
    try:
        fused = fuse_shared_inputs(folder / DECODER_WITH_PAST, work / DECODER_WITH_PAST, keep_fp32)
        _ungrouped(work / DECODER_WITH_PAST)
        kept = quantize_graph(work / DECODER_WITH_PAST, folder / ONE_ROW, BLOCK_SIZE, keep_fp32, bits=BITS,
                              symmetric=SYMMETRIC)
    finally:
        shutil.rmtree(work)
    return {"file": ONE_ROW, "bits": BITS, "block_size": BLOCK_SIZE, "symmetric": SYMMETRIC,
            "fused_matmul_sets": fused, "kept_nodes": kept}


def one_row_agreement(folder: Path, check: Validation, model_config: Any) -> dict[str, float | int]:
    """Greedy tokens of each validation row alone, stepped on the one-row graph, against the fp32 graphs' (EOS
    suppressed)."""
    ex = example_batch(model_config, check.enc_lengths, 1, check.seed)
    kwargs = {"max_new_tokens": CHECK_NEW_TOKENS, "min_new_tokens": CHECK_NEW_TOKENS, "num_beams": 1,
              "do_sample": False}
    tokens = []
    for kind in (False, "int8"):  # one at a time: a large model's fp32 and int8 graphs need not fit together
        rt = OnnxT5.from_staged(folder, quantized=kind, search_graph=False)
        if kind:  # whatever the decoder's size (the runtime uses the graph above ONE_ROW_MIN_STEP_BYTES only)
            rt.one_row = OneRow(folder / ONE_ROW, session_options(None), ["CPUExecutionProvider"], lambda _: None)
        tokens.append(np.concatenate([rt.generate(ex["input_ids"][i:i + 1], ex["attention_mask"][i:i + 1],
                                                  **kwargs)[:, 1:] for i in range(len(check.enc_lengths))]))
        del rt
    fp32, one_row = tokens
    return {"greedy_token_agreement": float(np.mean(fp32 == one_row)),
            "greedy_sequence_agreement": float(np.mean(np.all(fp32 == one_row, axis=1))),
            "new_tokens": CHECK_NEW_TOKENS, "rows": len(check.enc_lengths)}
