"""The decoder's self-attention bias read from a table: one Gather where the trace computes T5's buckets every step.

T5's decoder adds to its self-attention scores a learned bias that depends only on the distance d = query position -
key position, through a bucket (`T5Attention._relative_position_bucket`: exact below 16 positions, logarithmic up to
`relative_attention_max_distance`, constant beyond), and masks every key after the query (d < 0). The trace computes
that each step: two ranges, the bucket arithmetic (a Log, Divs, Mins, Where), the causal mask (LessOrEqual, Expand,
Where) and their shapes, about 45 nodes run at every step, each a dispatch of its own for a few dozen numbers.
Every decoder layer reads the same bias (T5 computes it in the first layer and passes it on), so one table of
`max_distance + 2` columns holds all of it:

    column d (0 <= d <= max_distance)    the bias at distance d, which is also the bias at every larger distance
    column -1 (the last)                 the mask's fill value, for every key after the query

and the graph gathers the (heads, new tokens, keys) bias with index clip(d, -1, max_distance): the same values the
trace computed, bit for bit. The table comes from the model's own `compute_bias`, not from a copy of the bucketing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.layout import data_name
from export.surgery import MS_DOMAIN, has_subgraphs, remove_dead_nodes, save_rewritten
from export.weights import DataFile

PREFIX = "position_table/"  # the names of what this pass adds
TABLE = PREFIX + "table"  # the initializer
IDS_INPUT = "input_ids"


def bias_table(model: Any) -> np.ndarray:
    """(1, heads, max_distance + 2) float32: the decoder's self-attention bias at each distance 0..max_distance, then
    the causal mask's fill value (the dtype's minimum, as transformers' masks use)."""
    import torch

    attention = model.get_decoder().block[0].layer[0].SelfAttention
    far = int(model.config.relative_attention_max_distance)
    with torch.no_grad():
        # one query at position 2 * far over keys 0..2 * far: distances 2 * far .. 0, the model's own buckets
        values = attention.compute_bias(1, 2 * far + 1, past_seen_tokens=2 * far)[0, :, 0].flip(-1).float().numpy()
    if not np.array_equal(values[:, far:], np.repeat(values[:, far:far + 1], far + 1, axis=1)):
        raise ValueError(f"the decoder's position bias still changes past relative_attention_max_distance={far}: "
                         "its buckets are not T5's, so the bias cannot be read from a table")
    fill = np.full((values.shape[0], 1), torch.finfo(torch.float32).min, dtype=np.float32)
    return np.concatenate([values[:, :far + 1], fill], axis=1)[None]


def read_bias_from_table(path: Path, table: np.ndarray) -> int:
    """Rewrite the decoder-with-past graph at `path` so that its self-attentions (onnxruntime's MultiHeadAttention on
    a cache, as `export.fuse_attention` writes them) read their bias from `table` (`bias_table`); how many attentions
    were rewired. Nothing changes where they do not share one bias (not T5's decoder). `decoder_model.onnx`, run once
    per call, keeps the trace's: its layers each mask their own copy of the bias (OnnxT5 serves the first step from
    this graph on an empty past)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)  # external weights, if any, stay where they are
    graph = model.graph
    inputs = {i.name for i in graph.input}
    if has_subgraphs(graph) or IDS_INPUT not in inputs:
        return 0
    attentions = [n for n in graph.node if n.op_type == "MultiHeadAttention" and n.domain == MS_DOMAIN
                  and len(n.input) > 5 and n.input[5]]
    biases = {n.input[5] for n in attentions}
    pasts = [n.input[6] for n in attentions if len(n.input) > 6 and n.input[6]]  # each layer's; one length
    if len(biases) != 1 or not pasts or len(pasts) != len(attentions) or not set(pasts) <= inputs:
        return 0
    heads = {a.i for n in attentions for a in n.attribute if a.name == "num_heads"}
    if heads != {table.shape[1]}:
        raise ValueError(f"{path.name}: the attentions have {sorted(heads)} heads, the position table "
                         f"{table.shape[1]}")
    far = table.shape[2] - 2

    def name(part: str) -> str:
        return PREFIX + part

    constants: list[Any] = []

    def ints(part: str, values: Any) -> str:  # Constant nodes, as the trace writes its own: not weights
        constants.append(helper.make_node("Constant", [], [name(part)],
                                          value=numpy_helper.from_array(np.asarray(values, dtype=np.int64))))
        return name(part)

    # in the graph's data file with its other weights (a few kB: heads x (max_distance + 2) floats)
    data = DataFile(path.with_name(data_name(path.name)), extend=True)
    try:
        graph.initializer.append(data.append(TABLE, table.shape, TensorProto.FLOAT,
                                             [np.ascontiguousarray(table, dtype=np.float32).tobytes()]))
    finally:
        data.close()
    # the new tokens' positions past .. past + new - 1, over the keys 0 .. past + new - 1
    nodes = [helper.make_node("Shape", [IDS_INPUT], [name("ids_shape")]),
             helper.make_node("Gather", [name("ids_shape"), ints("one", 1)], [name("new")]),
             helper.make_node("Shape", [pasts[0]], [name("past_shape")]),
             helper.make_node("Gather", [name("past_shape"), ints("two", 2)], [name("past")]),
             helper.make_node("Add", [name("past"), name("new")], [name("total")]),
             helper.make_node("Range", [name("past"), name("total"), name("one")], [name("queries")]),
             helper.make_node("Range", [ints("start", 0), name("total"), name("one")], [name("keys")]),
             helper.make_node("Unsqueeze", [name("queries"), ints("column", [1])], [name("query_column")]),
             helper.make_node("Sub", [name("query_column"), name("keys")], [name("distance")]),
             helper.make_node("Clip", [name("distance"), ints("masked", -1), ints("far", far)], [name("index")]),
             helper.make_node("Gather", [TABLE, name("index")], [name("bias")], axis=2)]
    nodes = constants + nodes
    for node in nodes:
        node.name = node.output[0]
    # named as the trace names the lookup it replaces, which the int8 and 4-bit passes keep fp32 by that name
    nodes[-1].name = name("relative_attention_bias/Gather")
    for node in reversed(nodes):  # before every reader: they read only graph inputs, initializers and each other
        graph.node.insert(0, node)
    graph.value_info.append(helper.make_tensor_value_info(name("bias"), TensorProto.FLOAT,
                                                          [1, table.shape[1], None, None]))
    for node in attentions:
        node.input[5] = name("bias")
    remove_dead_nodes(graph)
    read = {name for node in graph.node for name in node.input}
    for unread in [t for t in graph.initializer if t.name not in read]:  # the trace's bias embedding
        graph.initializer.remove(unread)
    save_rewritten(model, path)
    return len(attentions)
