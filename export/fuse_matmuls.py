"""Weight MatMuls that read one input, as one MatMul and a Split: a self-attention's q, k and v, a gated feed-forward's
wi_0 and wi_1.

For the one-row graph (`export.one_row`): at one row each MatMulNBits quantizes its input and multiplies a narrow
matrix, and t5-base's self-attention runs three of them on one input. One MatMul over the three weights side by side
(768 x 2,304), then a Split into the three outputs they had, took 0.84x and 0.92x the one-row step's time on t5-base
12-12 in two alternations (mt5-small 8-8, whose step is its output projection, 0.99x), with the same outputs bit for
bit: 8-bit blocks run along each weight column, and columns side by side quantize as they did apart
(docs/results.md, "The one-row int8 graph").

The graph is written without reading the source's weights into memory: its data file is copied into the target's folder
under its own name, and only the fused weights, read one set at a time, go to a second data file.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from export.weights import DataFile

FUSED_DATA_SUFFIX = ".fused_data"  # the second data file: the target's name and this


def _module(node: Any) -> str:
    """The module a TorchScript MatMul belongs to: /model/decoder/block.0/layer.0/SelfAttention/q/MatMul -> q."""
    parts = node.name.split("/")
    return parts[-2] if len(parts) > 1 else node.name


def shared_input_sets(graph: Any, keep: tuple[str, ...] = ()) -> list[list[Any]]:
    """Sets of two or more MatMuls of `graph` that multiply one input by fp32 2-D initializers of the same number of
    rows, none of a module in `keep`, each set in graph order."""
    from onnx import TensorProto

    weights = {t.name: t for t in graph.initializer}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    by_input: dict[str, list[Any]] = {}
    for node in graph.node:
        weight = weights.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if (weight is not None and len(weight.dims) == 2 and weight.data_type == TensorProto.FLOAT
                and readers[weight.name] == 1 and _module(node) not in keep):
            by_input.setdefault(node.input[0], []).append(node)
    return [nodes for nodes in by_input.values()
            if len(nodes) > 1 and len({weights[n.input[1]].dims[0] for n in nodes}) == 1]


def fuse_shared_inputs(source: Path, target: Path, keep: tuple[str, ...] = ()) -> int:
    """Write `target` (in another folder than `source`'s): the graph at `source` with each of its `shared_input_sets`
    as one MatMul by the set's weights side by side, named after the modules joined (q_k_v), then a Split into the
    outputs the set had; returns how many sets were fused. MatMuls of modules in `keep` stay as they are."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    sets = shared_input_sets(graph, keep)
    locations = {e.value for t in graph.initializer for e in t.external_data if e.key == "location"}
    for location in locations:  # a copy: onnx refuses to read a data file with more than one hard link
        shutil.copyfile(source.parent / location, target.parent / location)
    weights = {t.name: t for t in graph.initializer}
    first = {id(nodes[0]): nodes for nodes in sets}
    fused = {id(n) for nodes in sets for n in nodes}
    data = DataFile(target.parent / (target.name + FUSED_DATA_SUFFIX))
    nodes: list[Any] = []
    gone: set[str] = set()
    try:
        for node in graph.node:
            if id(node) not in fused:
                nodes.append(node)
                continue
            group = first.get(id(node))
            if group is None:
                continue
            arrays = [numpy_helper.to_array(weights[n.input[1]], str(source.parent)) for n in group]
            name = "/".join([*group[0].name.split("/")[:-2], "_".join(_module(n) for n in group), "MatMul"])
            joined = np.concatenate(arrays, axis=1)
            graph.initializer.append(data.append(f"{name}.weight", joined.shape, onnx.TensorProto.FLOAT,
                                                 [joined.data]))
            graph.initializer.append(numpy_helper.from_array(np.array([a.shape[1] for a in arrays], np.int64),
                                                             f"{name}.split"))
            nodes.append(helper.make_node("MatMul", [group[0].input[0], f"{name}.weight"], [f"{name}_output_0"],
                                          name=name))
            nodes.append(helper.make_node("Split", [f"{name}_output_0", f"{name}.split"],
                                          [n.output[0] for n in group], name=name.replace("/MatMul", "/Split"),
                                          axis=-1))
            gone.update(n.input[1] for n in group)
    finally:
        data.close()
    del graph.node[:]
    graph.node.extend(nodes)
    kept = [t for t in graph.initializer if t.name not in gone]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.save_model(model, str(target))
    return len(sets)
