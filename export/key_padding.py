"""Whether a traced attention mask is key padding: the same for every query position, and read from one graph input.

T5's encoder folds its padding mask into what it adds to the scores: Where(mask, position bias, the dtype's minimum),
a (batch, heads, length, length) tensor made once per call and read by every layer. At batch 8 and 256 tokens the
Where alone took a tenth of the default student's encoder, and at batch 32 and 512 tokens the tensor is 400 MB for
t5-base. MultiHeadAttention takes the position bias as it is, (1, heads, length, length), and the padding as a
(batch, length) key_padding_mask instead.

That the mask is key padding is not read from the graph's structure: a causal mask built from the inputs' shapes reads
the same input's values. It is shown by running the nodes the mask is computed from, alone, on a probe: batch 2,
length 5, the second row's mask 0, 1, 1, 0, 0 (padding on both sides and a hole). The mask is key padding when every
query position of each row keeps exactly the keys that row's input marks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

PROBE = np.array([[1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
BATCH, LENGTH = PROBE.shape
OTHER = 3  # the probe's size for any other dim an input names


def _cone(mask: str, producer: dict[str, Any]) -> list[Any]:
    """The nodes `mask` is computed from, in graph order, down to the Shape nodes: what a Shape reads is not needed,
    only its dims (the embeddings' shape, say, and not the embedding table)."""
    seen, todo, nodes = set(), [mask], {}
    while todo:
        name = todo.pop()
        if name in seen or name not in producer:
            continue
        seen.add(name)
        node = producer[name]
        nodes[id(node)] = node
        if node.op_type != "Shape":
            todo.extend(node.input)
    return list(nodes.values())


def _probe_shape(node: Any, shapes: dict[str, list[Any]], sizes: dict[str, int]) -> Any | None:
    """A Constant for what Shape `node` gives on the probe: its input's inferred dims at the probe's sizes, or None
    where a dim is neither a number nor one of the probe's named dims."""
    from onnx import helper, numpy_helper

    dims = shapes.get(node.input[0])
    if not dims or node.attribute:
        return None
    values = [d if isinstance(d, int) else sizes.get(d) for d in dims]
    if None in values:
        return None
    return helper.make_node("Constant", [], [node.output[0]], name=node.name,
                            value=numpy_helper.from_array(np.asarray(values, dtype=np.int64)))


def key_padding_source(model: Any, producer: dict[str, Any], shapes: dict[str, list[Any]], mask: str,
                       reads: set[str]) -> str | None:
    """The graph input of which boolean `mask` (True: the score is kept) is the key padding, or None.

    `reads`: the graph inputs whose values `mask` is computed from; exactly one may be. `shapes`: the inferred dims
    of the graph's tensors (what a Shape node gives on the probe). None as well when the nodes behind the mask read
    a weight in a data file (then they are more than a mask's arithmetic)."""
    import onnxruntime
    from onnx import TensorProto, helper

    if len(reads) != 1:
        return None
    (source,) = reads
    declared = {i.name: i.type.tensor_type for i in model.graph.input}
    if source not in declared or len(declared[source].shape.dim) != PROBE.ndim:
        return None
    # the probe's sizes for the source's dims; any other dim of the same name takes the same size, and the other
    # inputs' named dims (the decoder's length beside the encoder's) OTHER
    sizes = {d.dim_param: n for d, n in zip(declared[source].shape.dim, PROBE.shape, strict=True) if d.dim_param}
    for tensor in declared.values():
        sizes |= {d.dim_param: OTHER for d in tensor.shape.dim if d.dim_param and d.dim_param not in sizes}
    if any(d.HasField("dim_value") and d.dim_value != n for d, n in zip(declared[source].shape.dim, PROBE.shape,
                                                                          strict=True)):
        return None
    nodes = []
    for node in _cone(mask, producer):
        if node.op_type == "Shape" and node.input[0] not in declared:
            node = _probe_shape(node, shapes, sizes)
            if node is None:
                return None
        nodes.append(node)
    used = {name for node in nodes for name in node.input}
    initializers = [t for t in model.graph.initializer if t.name in used]
    if any(t.data_location == TensorProto.EXTERNAL for t in initializers):
        return None
    inputs = [i for i in model.graph.input if i.name in used]
    declared = {i.name: i.type.tensor_type for i in inputs}
    feed = {}
    for name, tensor in declared.items():
        dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else sizes[d.dim_param] for d in tensor.shape.dim]
        feed[name] = PROBE.astype(dtype) if name == source else np.zeros(dims, dtype=dtype)
    graph = helper.make_graph(nodes, "key_padding_probe", inputs,
                              [helper.make_tensor_value_info(mask, TensorProto.BOOL, None)], initializer=initializers)
    probe = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    kept = np.asarray(session.run(None, feed)[0])
    if kept.ndim != 4 or kept.shape[0] != BATCH or kept.shape[1] != 1 or kept.shape[3] != LENGTH:
        return None
    expected = np.broadcast_to(PROBE[:, None, None, :] != 0, kept.shape)  # the same for every query position
    return source if np.array_equal(kept, expected) else None
