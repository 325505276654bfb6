"""Graph surgery after the trace: what the traced graphs compute without a purpose is taken out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"  # onnxruntime's contrib ops


def has_subgraphs(graph: Any) -> bool:
    """Whether a node of `graph` holds a subgraph (If, Loop): those can read outer names, which the passes after the
    trace do not rename into; T5's traced graphs have none."""
    from onnx import AttributeProto

    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute)


def attribute(node: Any, name: str, default: Any = None) -> Any:
    """The value of a node's attribute `name`, or `default`."""
    from onnx import helper

    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def constant_value(name: str, producer: dict[str, Any], initializers: dict[str, Any]) -> np.ndarray | None:
    """The value of `name` when an inline initializer or a Constant node (`value` or `value_float`) holds it; None for
    anything else, weights in a data file included."""
    from onnx import TensorProto, numpy_helper

    if name in initializers:
        tensor = initializers[name]
        return None if tensor.data_location == TensorProto.EXTERNAL else numpy_helper.to_array(tensor)
    node = producer.get(name)
    if node is None or node.op_type != "Constant":
        return None
    value = attribute(node, "value")
    if value is not None:
        return numpy_helper.to_array(value)
    value_float = attribute(node, "value_float")
    return None if value_float is None else np.asarray(value_float, dtype=np.float32)


def rename_value(graph: Any, old: str, new: str) -> None:
    """Rename the value `old` to `new` wherever `graph` names it: node inputs and outputs, graph inputs, outputs and
    value_info."""
    for node in graph.node:
        for names in (node.input, node.output):
            for k, name in enumerate(names):
                if name == old:
                    names[k] = new
    for value in (*graph.input, *graph.output, *graph.value_info):
        if value.name == old:
            value.name = new


def remove_dead_nodes(graph: Any) -> int:
    """Take out every node none of whose outputs is read by a node or is a graph output; how many."""
    outputs = {o.name for o in graph.output}
    removed = 0
    while True:
        read = {name for node in graph.node for name in node.input} | outputs
        dead = [node for node in graph.node if not any(name in read for name in node.output)]
        if not dead:
            return removed
        for node in dead:
            graph.node.remove(node)
        removed += len(dead)


def save_rewritten(model: Any, path: Path) -> None:
    """Save a model a pass has rewritten at `path`: what no longer feeds an output taken out, com.microsoft's opset
    declared if a contrib op is in it, and the value_info of the tensors gone dropped."""
    import onnx
    from onnx import helper

    graph = model.graph
    remove_dead_nodes(graph)
    if any(n.domain == MS_DOMAIN for n in graph.node) and not any(o.domain == MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    drop_stale_value_info(graph)
    onnx.save(model, str(path))


def drop_stale_value_info(graph: Any) -> None:
    """Remove the value_info of tensors no node reads or writes any more."""
    live = {name for node in graph.node for name in (*node.input, *node.output)}
    for value in [v for v in graph.value_info if v.name not in live]:
        graph.value_info.remove(value)


def drop_single_input_concats(path: Path) -> int:
    """Rewire the graph at `path` around every Concat of one input (an identity that copies); how many were dropped.

    transformers' cache starts each layer empty and concatenates onto it; constant folding leaves `Concat(x)`, and
    onnxruntime runs it as a copy: the decoder with past copied every cross-attention K/V at every step. A Concat
    whose output is a graph output writes that output from its producer instead; one whose input is also a graph
    input or initializer becomes an Identity.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)  # external weights, if any, stay where they are
    graph = model.graph
    if has_subgraphs(graph):
        return 0
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
