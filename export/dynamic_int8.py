"""Dynamic int8 quantization of one graph, a weight at a time: the graph onnxruntime's `quantize_dynamic` writes,
without holding the graph's weights in memory.

`quantize_dynamic` loads its input with every weight (onnx.load), saves a deep copy and loads it again for shape
inference, then quantizes each weight from a numpy copy: it holds its input graph about 3.5 times, which made the
export's peak 3.5x the fp32 weights of an mt5-base-shaped model (docs/results.md, "Export memory"). This module writes
the same graph from the graph file alone (read without its weights) and the data file, read a block at a time:

- MatMul with a constant weight: `DynamicQuantizeLinear` of its input (one per input, shared by the MatMuls that read
  it, as q, k and v do), `MatMulInteger` with the weight as int8 (symmetric, one scale per tensor), `Cast` and two
  `Mul` for the scales. onnxruntime fuses these into `DynamicQuantizeMatMul` when it loads the graph.
- Gather from a constant table (the token embeddings): the table as uint8 (asymmetric, one scale and zero point),
  then `DequantizeLinear` of the rows looked up.

The numbers are onnxruntime's own (`quant_utils.compute_data_quant_params` on the weight's minimum and maximum,
`quantize_nparray` on each block of rows), the node and tensor names those quantize_dynamic gives, so the rest of the
export (merging the int8 decoders, the cross-K/V graph, OnnxT5's reading of int8 folders) is unchanged;
tests/export/test_dynamic_int8.py checks nodes and tensors against quantize_dynamic's on every tiny configuration.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from export.layout import data_name
from export.weights import DataFile, tensor_blocks

BLOCK_BYTES = 64 << 20  # fp32 bytes of a weight read, quantized and written at a time


def _external(tensor: Any) -> dict[str, str]:
    return {entry.key: entry.value for entry in tensor.external_data}


def _float_rows(folder: Path, tensor: Any) -> Iterator[np.ndarray]:
    """The fp32 values of `tensor` (a graph's initializer), flat, a block of whole rows at a time: read from its data
    file into a buffer of about `BLOCK_BYTES`, never mapped (a mapped file's pages count in the resident size)."""
    import onnx
    from onnx import numpy_helper

    if tensor.data_location != onnx.TensorProto.EXTERNAL:
        yield numpy_helper.to_array(tensor).astype(np.float32).ravel()
        return
    ext = _external(tensor)
    count = int(np.prod(tensor.dims, dtype=np.int64))
    row = int(np.prod(tensor.dims[1:], dtype=np.int64)) if len(tensor.dims) > 1 else 1
    step = max(1, BLOCK_BYTES // 4 // max(1, row)) * max(1, row)
    with open(folder / ext["location"], "rb") as f:
        f.seek(int(ext.get("offset", 0)))
        for start in range(0, count, step):
            block = np.fromfile(f, dtype="<f4", count=min(step, count - start))
            if len(block) < min(step, count - start):
                raise ValueError(f"{folder / ext['location']} ends inside {tensor.name}: the file is truncated")
            yield block


def _quantize_tensor(folder: Path, tensor: Any, qtype: int, symmetric: bool, data: DataFile) -> list[Any]:
    """`tensor` quantized to `qtype` (one scale and zero point), its values appended to `data`: the initializers
    `{name}_quantized`, `{name}_scale` and `{name}_zero_point`, onnxruntime's numbers and names; two passes over the
    source's data file (range, then values)."""
    import onnx
    from onnxruntime.quantization.quant_utils import compute_data_quant_params, quantize_nparray

    low, high = np.float32(np.inf), np.float32(-np.inf)
    for block in _float_rows(folder, tensor):
        low, high = min(low, block.min()), max(high, block.max())
    # the parameters of the whole tensor depend only on its minimum and maximum, which these two values share
    zero_point, scale = compute_data_quant_params(np.array([low, high], dtype=np.float32), qtype, symmetric)
    values = data.append(tensor.name + "_quantized", tensor.dims, qtype,
                         (quantize_nparray(qtype, block, scale, zero_point) for block in _float_rows(folder, tensor)))
    return [values, onnx.helper.make_tensor(tensor.name + "_scale", tensor.data_type, [], scale.reshape(-1).tolist()),
            onnx.helper.make_tensor(tensor.name + "_zero_point", qtype, [], zero_point.reshape(-1).tolist())]


def quantize_graph(source: Path, target: Path, op_types: Iterable[str] = ("MatMul", "Gather"),
                   exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> list[str]:
    """Write `target` (and its data file, `export.layout.data_name`) from the fp32 graph `source`, as
    `quantize_dynamic(source, target, op_types_to_quantize=op_types, weight_type=QInt8, nodes_to_exclude=exclude,
    nodes_to_quantize=only)` writes it; returns the names of the nodes quantized."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    op_types, exclude = set(op_types), set(exclude)
    only = None if only is None else set(only)
    tensors = {t.name: t for t in graph.initializer}
    floats = {name for name, t in tensors.items() if t.data_type == onnx.TensorProto.FLOAT}
    data = DataFile(target.with_name(data_name(target.name)))
    initializers: list[Any] = []
    quantized: dict[str, tuple[int, tuple[str, str, str]]] = {}  # weight -> its type, (values, scale, zero point)
    activations: dict[str, tuple[str, str, str]] = {}  # tensor -> its DynamicQuantizeLinear outputs
    nodes, done, dequantized = [], [], []

    def weight(name: str, qtype: int, symmetric: bool) -> tuple[str, str, str]:
        if name in quantized:
            if quantized[name][0] != qtype:
                raise ValueError(f"{source}: {name} is read both by a MatMul and by a Gather; quantize_dynamic would "
                                 "give both the same quantized tensor, which this module does not reproduce")
            return quantized[name][1]
        made = _quantize_tensor(source.parent, tensors[name], qtype, symmetric, data)
        initializers.extend(made)
        quantized[name] = qtype, (made[0].name, made[1].name, made[2].name)
        return quantized[name][1]

    def wanted(node: Any) -> bool:
        return node.op_type in op_types and node.name not in exclude and (only is None or node.name in only)

    try:
        for node in graph.node:
            if wanted(node) and node.op_type == "MatMul" and node.input[1] in floats:
                x, out, name = node.input[0], node.output[0], node.name
                if x not in activations:
                    activations[x] = (f"{x}_quantized", f"{x}_scale", f"{x}_zero_point")
                    nodes.append(helper.make_node("DynamicQuantizeLinear", [x], list(activations[x]),
                                                  f"{x}_QuantizeLinear"))
                x_q, x_scale, x_zp = activations[x]
                w_q, w_scale, w_zp = weight(node.input[1], onnx.TensorProto.INT8, symmetric=True)
                scales = f"{name}_quant_scales_mul"
                nodes += [
                    helper.make_node("MatMulInteger", [x_q, w_q, x_zp, w_zp], [f"{out}_output_quantized"],
                                     f"{name}_quant"),
                    helper.make_node("Cast", [f"{out}_output_quantized"], [f"{out}_output_quantized_cast_output"],
                                     f"{out}_output_quantized_cast", to=onnx.TensorProto.FLOAT),
                    helper.make_node("Mul", [x_scale, w_scale], [f"{scales}:0"], scales),
                    helper.make_node("Mul", [f"{out}_output_quantized_cast_output", f"{scales}:0"], [out],
                                     f"{name}_quant_output_scale_mul")]
                done.append(name)
            elif wanted(node) and node.op_type == "Gather" and node.input[0] in floats:
                t_q, t_scale, t_zp = weight(node.input[0], onnx.TensorProto.UINT8, symmetric=False)
                out = node.output[0]
                gather = onnx.NodeProto()
                gather.CopyFrom(node)
                gather.input[0], gather.output[0] = t_q, f"{out}_quantized"
                # a MatMul reading these rows takes them quantized, as quantize_dynamic's would
                activations[out] = (f"{out}_quantized", t_scale, t_zp)
                dequantize = helper.make_node("DequantizeLinear", [f"{out}_quantized", t_scale, t_zp], [out],
                                              f"{out}_DequantizeLinear")
                nodes += [gather, dequantize]
                dequantized.append(dequantize)
                done.append(node.name)
            else:
                nodes.append(node)
        # a dequantized lookup that nothing reads in fp32 any more is dropped, as quantize_dynamic adds none
        read = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        unread = {id(n) for n in dequantized if n.output[0] not in read}
        nodes = [n for n in nodes if id(n) not in unread]
        read = {name for node in nodes for name in node.input} | {o.name for o in graph.output}
        kept = [t for t in graph.initializer if t.name in read]  # the fp32 tensors something still reads
        for tensor in kept:
            if tensor.data_location == onnx.TensorProto.EXTERNAL:
                initializers.append(data.append(tensor.name, tensor.dims, tensor.data_type,
                                                tensor_blocks(source.parent, tensor)))
            else:
                initializers.append(tensor)
    except BaseException:
        data.close()
        data.path.unlink(missing_ok=True)  # nothing half-written is left beside the graphs
        raise
    data.close()
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    onnx.save_model(model, str(target))
    os.chmod(data.path, os.stat(target).st_mode & 0o777)
    return done
