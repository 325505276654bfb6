"""`decoder_cross_kv_model.onnx`: the first step's cross-attention keys and values, cut out of its graph.

The first-step graph computes each layer's cross-attention K/V from encoder_hidden_states, and everything else a step
computes the with-past graph computes too, given a past of length 0 (the same logits to float rounding:
`export.validate` checks it against PyTorch). So the runtime serves both steps with the with-past graph and this small
one, which holds only the cross-attention K and V projections:

    inputs   encoder_hidden_states (B, L, d_model)
    outputs  present.{i}.encoder.key|value (B, heads, L, d_kv): the with-past graph's past_key_values.{i}.encoder.*

Against the merged decoder (`export.merge`, kept for optimum and transformers.js), each weight is in one graph and
outside any `If`: onnxruntime prepacks it once while loading (a constant MatMul weight is packed for each node that
reads it, and the merged graph's two branches both read every decoder weight), and its int8 fusions apply (they miss
nodes inside an `If`'s branches). The graph is a slice of the first-step graph, so it works on its int8 and 4-bit
versions alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.layout import data_name
from export.weights import copy_weights, save_derived

SOURCE = "encoder_hidden_states"  # the one input the slice may read


def _slice(graph: Any, outputs: list[str]) -> list[Any]:
    """The nodes of `graph` that `outputs` depend on, in the graph's (topological) order."""
    producer = {name: node for node in graph.node for name in node.output}
    needed: set[int] = set()
    stack = list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            stack.extend(name for name in node.input if name)
    return [node for node in graph.node if id(node) in needed]


def write_cross_kv(folder: Path, first: str, out: str) -> int:
    """Write `out` (and its data file) in `folder` from the first-step graph `first` there; returns the bytes of
    weights written. ValueError when the cross-attention K/V depend on more than encoder_hidden_states."""
    import onnx

    model = onnx.load(str(folder / first), load_external_data=False)
    graph = model.graph
    outputs = [value for value in graph.output if ".encoder." in value.name and value.name.startswith("present.")]
    if not outputs:
        raise ValueError(f"{first} has no present.*.encoder.* outputs: it is not a first-step decoder graph")
    nodes = _slice(graph, [value.name for value in outputs])
    if any(attr.type in (attr.GRAPH, attr.GRAPHS) for node in nodes for attr in node.attribute):
        raise ValueError(f"{first}: the cross-attention K/V are computed under a subgraph; export again")
    read = {name for node in nodes for name in node.input if name}
    inputs = [value for value in graph.input if value.name in read]
    if [value.name for value in inputs] != [SOURCE]:
        raise ValueError(f"{first}: the cross-attention K/V read {[v.name for v in inputs]}, not {SOURCE} alone; "
                         "they cannot be computed once per input")
    sources = {tensor.name: tensor for tensor in graph.initializer if tensor.name in read}
    initializers, written = copy_weights(folder, sources, folder / data_name(out))
    save_derived(model, onnx.helper.make_graph(nodes, "cross_kv", inputs, outputs, initializers), folder, out, first)
    return written
