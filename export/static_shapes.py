"""Reshape targets made static after the trace: constants, and the graph inputs' own dims read once.

The TorchScript trace computes each `view`/`reshape` target from the runtime shape of the tensor it reshapes: a Shape,
a Gather and an Unsqueeze per dim, a Concat, in every attention of every layer. onnxruntime runs that chain at every
call (its constant folding cannot: the batch and the lengths are dynamic), and each of those nodes costs a few
microseconds, more than its work, once a step has streamed the weights through the caches. Yet the heads, d_kv and
d_model are fixed at export, and what varies is a dim of the reshaped tensor itself or of a graph input.

onnxruntime's symbolic shape inference (`onnxruntime.tools.symbolic_shape_infer`) names every dim of every tensor in
terms of the graph inputs' dims. Each computed target is rewritten from those names, dim by dim: a number; 0 where the
output keeps the input's dim at the same place (Reshape's "copy this dim"); a graph input's dim, read by one Shape
and Gather that every target needing it shares; at most one -1 for what is left. The chains nothing reads any more
are then taken out. A Reshape whose shapes the inference cannot name stays as traced; `validate` compares the
rewritten graphs with PyTorch at several batch sizes, lengths and beam counts.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from export.surgery import has_subgraphs, save_rewritten

Dim = int | str | None
Piece = tuple[str, Any]  # ("const", [ints]) or ("dims", (input name, (axes)))
PREFIX = "static_shapes/"  # the names of what this pass adds


def value_dims(value: Any) -> list[Dim] | None:
    """A value_info's dims: ints, symbolic names, None where unnamed; None without a shape."""
    tensor = value.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]


def inferred_shapes(model: Any) -> dict[str, list[Dim]]:
    """Every tensor's dims by onnxruntime's symbolic shape inference; {} if it fails.

    It reads the values of the initializers it meets; the weights (in the data file, not loaded) are handed to it as
    graph inputs of their dtype and dims instead, which is all a shape needs."""
    from onnx import TensorProto, helper
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    probe = type(model)()
    probe.CopyFrom(model)
    external = [t for t in probe.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    for tensor in external:
        probe.graph.input.append(helper.make_tensor_value_info(tensor.name, tensor.data_type, list(tensor.dims)))
        probe.graph.initializer.remove(tensor)
    logger = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it warns about every op it does not know; such tensors simply stay unnamed
    try:
        inferred = SymbolicShapeInference.infer_shapes(probe, auto_merge=False, guess_output_rank=False)
    except Exception:  # noqa: BLE001 - an optimization only: a graph it cannot read keeps its traced targets
        return {}
    finally:
        logger.setLevel(level)
    if inferred is None:
        return {}
    graph = inferred.graph
    shapes = {v.name: value_dims(v) for v in (*graph.value_info, *graph.input, *graph.output)}
    return {name: dims for name, dims in shapes.items() if dims is not None}


def _pieces(source: list[Dim], target: list[Dim], input_dims: dict[str, tuple[str, int]]) -> list[Piece] | None:
    """The target as constants and graph-input dims (consecutive ones merged); None when it cannot be written so."""
    pieces: list[Piece] = []
    wildcard = False
    for axis, dim in enumerate(target):
        if isinstance(dim, int):
            value = dim
        elif dim is None:
            return None
        elif axis < len(source) and source[axis] == dim:
            value = 0  # Reshape copies the input's dim at this place (allowzero is 0: checked by the caller)
        elif dim in input_dims:
            name, input_axis = input_dims[dim]
            if pieces and pieces[-1][0] == "dims" and pieces[-1][1][0] == name:
                pieces[-1] = ("dims", (name, (*pieces[-1][1][1], input_axis)))
            else:
                pieces.append(("dims", (name, (input_axis,))))
            continue
        elif not wildcard:
            wildcard, value = True, -1
        else:
            return None
        if pieces and pieces[-1][0] == "const":
            pieces[-1] = ("const", [*pieces[-1][1], value])
        else:
            pieces.append(("const", [value]))
    return pieces


def static_reshapes(path: Path) -> int:
    """Rewrite the computed Reshape targets of the graph at `path` (external data stays where it is); how many."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if has_subgraphs(graph):
        return 0
    shapes = inferred_shapes(model)
    if not shapes:
        return 0
    # targets that are constants, or this pass's own (a second run leaves the graph as it is)
    constant = {t.name for t in graph.initializer} | {o for n in graph.node if n.op_type == "Constant"
                                                      or n.name.startswith(PREFIX) for o in n.output}
    input_dims: dict[str, tuple[str, int]] = {}  # a dim's name -> the first graph input (and axis) that has it
    for value in graph.input:
        for axis, dim in enumerate(value_dims(value) or []):
            if isinstance(dim, str):
                input_dims.setdefault(dim, (value.name, axis))
    made: dict[Any, str] = {}  # what was built once: shapes of inputs, their gathered dims, whole targets
    new_nodes: list[Any] = []

    def build(key: Any, op: str, inputs: list[str], **attrs: Any) -> str:
        if key not in made:
            made[key] = f"{PREFIX}{op}_{len(made)}"
            new_nodes.append(helper.make_node(op, inputs, [made[key]], name=made[key], **attrs))
        return made[key]

    def const(values: list[int]) -> str:  # a Constant node, as the trace writes its own (not a weight)
        return build(("const", tuple(values)), "Constant", [],
                     value=numpy_helper.from_array(np.asarray(values, dtype=np.int64)))

    rewritten = 0
    for node in graph.node:
        if node.op_type != "Reshape" or node.input[1] in constant:
            continue
        if any(a.name == "allowzero" and a.i for a in node.attribute):
            continue  # a 0 would mean an empty dim there
        source, target = shapes.get(node.input[0]), shapes.get(node.output[0])
        pieces = _pieces(source, target, input_dims) if source and target else None
        if pieces is None:
            continue
        names = []
        for kind, value in pieces:
            if kind == "const":
                names.append(const(value))
            else:
                name, axes = value
                shape = build(("shape", name), "Shape", [name])
                names.append(build(("dims", name, axes), "Gather", [shape, const(list(axes))], axis=0))
        node.input[1] = names[0] if len(names) == 1 else build(("concat", *names), "Concat", names, axis=0)
        rewritten += 1
    if not rewritten:
        return 0
    # the new nodes first: they read only graph inputs and one another, and the graph stays topologically sorted
    nodes = [*new_nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    save_rewritten(model, path)
    return rewritten
