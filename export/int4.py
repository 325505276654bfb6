"""4-bit graphs beside the fp32 ones (`*_q4.onnx`): block-wise weight-only quantization of the MatMul weights.

onnxruntime's `MatMulNBitsQuantizer` with its default configuration (`DefaultWeightOnlyQuantConfig`: round to nearest,
no calibration data) turns each MatMul with a constant weight (K x N) into a `MatMulNBits` node (com.microsoft): each
output column is cut along K into blocks of `block_size` values, each block stored as 4-bit integers with an fp32
scale and a 4-bit zero point; with accuracy_level 4 (`ACCURACY_LEVEL`) onnxruntime quantizes the activations to int8
per block inside the MatMul and multiplies with int8 kernels.

What stays int8 or fp32, and why:
- the token embeddings' Gather: int8, as --int8 makes it (`export.dynamic_int8`, a first pass). A 4-bit Gather
  (GatherBlockQuantized) needs opset 21's int4 type: the quantizer then raises the graph's opset from 17 to 21, where
  ReduceMean takes its axes as an input, and onnxruntime refuses the graph (T5's RMS layer norm uses ReduceMean). The
  TorchScript exporter writes opset 20 at most.
- the relative-attention-bias Gathers (32 x heads values): fp32, as in the int8 graphs.
- `keep_fp32` modules: fp32. By default each `wo` of a gated-GELU model (`exporter.default_keep_fp32`): the
  activations entering it are T5's known outliers, the reason --int8 and fp16 keep it too.
- `keep_int8` modules (none by default; e.g. lm_head, for a model whose 4-bit output matrix changes its tokens): int8.

Asymmetric, a zero point per block: within a block of 32 weights the largest value on one side is rarely matched on the
other, and the zero point lets the 16 levels span [min, max] instead of [-max|w|, max|w|]. Round-to-nearest on
random blocks of 32 gave 6 % less RMS error on Gaussian weights and 12 % less on Laplace ones (heavier tails) than
symmetric, for half a byte more per block (20.5 bytes per 32 weights instead of 20).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from export.dynamic_int8 import quantize_graph as quantize_int8
from export.errors import ExportError
from export.external import move_graph
from export.layout import GRAPHS, quantized_name
from export.quantize import INT8_OPS, excluded_nodes

DEFAULT_BLOCK_SIZE = 32  # onnxruntime's own `matmul_nbits_quantizer` command line defaults to 32
BLOCK_SIZES = (16, 32, 64, 128, 256)  # what onnxruntime's block quantizer (MLAS) takes; others fail inside it
SYMMETRIC = False  # a zero point per block: see the module docstring
ALGORITHM = "DEFAULT"  # onnxruntime's name for its round-to-nearest quantizer (`DefaultWeightOnlyQuantConfig`)
OP_TYPES = ("MatMul",)  # what is made 4-bit
# MatMulNBits' accuracy_level 4: the activations are quantized to int8 per block and multiplied with int8 kernels;
# unset (0), onnxruntime dequantizes the weights to fp32 inside the MatMul, which was slower by a fifth to a half on
# the t5-base shape at batch 1 and 8, on the default student at batch 8 and on the teacher; within 2 % (faster) on the
# student at batch 1 (`python -m bench.int4_levels`; docs/results.md, "4-bit weights")
ACCURACY_LEVEL = 4


def check_options(block_size: Any, keep_fp32: tuple[str, ...], keep_int8: tuple[str, ...]) -> int:
    """`block_size` when onnxruntime's quantizer takes it and no module is kept both fp32 and int8; ExportError naming
    the choices otherwise."""
    if isinstance(block_size, bool) or block_size not in BLOCK_SIZES:
        raise ExportError(f"--int4-block-size {block_size!r}: onnxruntime's 4-bit quantizer takes "
                          f"{', '.join(map(str, BLOCK_SIZES))} (default {DEFAULT_BLOCK_SIZE}).")
    both = sorted(set(keep_fp32) & set(keep_int8))
    if both:
        raise ExportError(f"--int4-keep-fp32 and --int4-keep-int8 both name {', '.join(both)}; name each module in "
                          "one of them.")
    return int(block_size)


def _nbits_quantizer() -> Any:
    """onnxruntime's `matmul_nbits_quantizer` module, without what importing it does to the root logger.

    It calls `logging.basicConfig(level=logging.INFO)` when imported: every later INFO record of the process would be
    printed, its own line per node of every graph first. The root logger's level and handlers are put back as they
    were; the module's records then follow the application's logging settings, as any library's.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.setLevel(level)
    root.handlers[:] = handlers
    return matmul_nbits_quantizer


def _int8_nodes(path: Path, keep_int8: tuple[str, ...]) -> list[str]:
    """What the int8 pass quantizes in the fp32 graph at `path`: each Gather that reads a table, the token embeddings
    (not the relative-attention-bias ones, fp32 as with --int8), and the MatMuls of the `keep_int8` modules."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    tables = {t.name for t in graph.initializer}
    return [node.name for node in graph.node
            if (node.op_type == "Gather" and node.input[0] in tables
                and "relative_attention_bias" not in node.name.split("/"))
            or (node.op_type == "MatMul" and any(part in keep_int8 for part in node.name.split("/")))]


def quantize_graph(source: Path, target: Path, block_size: int = DEFAULT_BLOCK_SIZE, keep_fp32: tuple[str, ...] = (),
                   keep_int8: tuple[str, ...] = (), accuracy_level: int = ACCURACY_LEVEL, bits: int = 4,
                   symmetric: bool = SYMMETRIC) -> list[str]:
    """Write `target` (and its data file) from the fp32 graph `source`; returns the MatMul nodes not made 4-bit.

    `accuracy_level` is MatMulNBits' (0: weights dequantized to fp32; 4: activations quantized to int8); only the
    level benchmark (`bench.int4_levels`) sets anything but `ACCURACY_LEVEL`. `bits` 8 and `symmetric` write the
    one-row int8 graph's blocks instead (`export.one_row`)."""
    nbits = _nbits_quantizer()
    kept = excluded_nodes(source, (*keep_fp32, *keep_int8), bias_gathers=False)
    work = target.parent / f".int4-{target.name}"
    (work / "q4").mkdir(parents=True)
    # the int8 pass first (the embeddings, keep_int8), then the 4-bit pass over its graph
    int8 = _int8_nodes(source, keep_int8)
    if int8:
        quantize_int8(source, work / "int8.onnx", INT8_OPS, only=int8)
    config = nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=symmetric, bits=bits,
                                                accuracy_level=accuracy_level, op_types_to_quantize=OP_TYPES)
    # every MatMul with a constant weight but the kept ones (the int8 ones are MatMulInteger nodes now)
    quantizer = nbits.MatMulNBitsQuantizer(str(work / "int8.onnx" if int8 else source), nodes_to_exclude=kept,
                                           algo_config=config)
    quantizer.process()
    # written alone in a folder of its own: the quantizer names its data file after its output (`.onnx.data`), which
    # `move_graph` renames to the folder's naming
    quantizer.model.save_model_to_file(str(work / "q4" / target.name), use_external_data_format=True)
    del quantizer
    move_graph(work / "q4" / target.name, target)
    shutil.rmtree(work)
    return kept


def quantize_int4(folder: Path, block_size: int = DEFAULT_BLOCK_SIZE, keep_fp32: tuple[str, ...] = (),
                  keep_int8: tuple[str, ...] = ()) -> dict[str, Any]:
    """Write `*_q4.onnx` (each with its own data file) beside each fp32 graph in `folder`; what export_meta.json
    records about them (the token agreement aside).

    `keep_fp32` and `keep_int8` name modules (lm_head, wo, wi, q, k, v, o) whose MatMuls stay fp32 or become int8
    instead of 4-bit.
    """
    block_size = check_options(block_size, keep_fp32, keep_int8)
    kept = {graph: quantize_graph(folder / graph, folder / quantized_name(graph, "int4"), block_size, keep_fp32,
                                   keep_int8) for graph in GRAPHS}
    for option, names in (("--int4-keep-fp32", keep_fp32), ("--int4-keep-int8", keep_int8)):
        for name in names:
            if not any(name in node.split("/") for nodes in kept.values() for node in nodes):
                raise ExportError(f"{option} names {name!r}, but no MatMul node belongs to a module of that name "
                                  "(examples: lm_head, wo, wi, q, k, v, o).")
    return {"bits": 4, "block_size": block_size, "symmetric": SYMMETRIC, "algorithm": ALGORITHM,
            "accuracy_level": ACCURACY_LEVEL,
            "op_types": list(OP_TYPES),
            # what is not 4-bit, by module: the embeddings and relative-attention-bias tables always
            "kept": {"int8": ["embed_tokens", *keep_int8], "fp32": ["relative_attention_bias", *keep_fp32]},
            "kept_nodes": kept}
