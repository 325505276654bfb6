"""The self-attention bias read from a table: one Gather where the trace computes T5's buckets at every call.

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

The encoder computes its bias once a call, but over every (query, key) pair: the same bucket arithmetic on length x
length numbers, then a transpose, a cost that grows with the square of the input's length (measured in
docs/results.md, "The encoder's position bias from a table"). Its buckets are bidirectional, so its table has a row
of heads for each distance key - query from -max_distance to max_distance; the graph gathers rows with index
clip(key - query, -max_distance, max_distance) + max_distance and puts the heads first, as the trace does after its
own lookup.
"""

from __future__ import annotations

from collections.abc import Callable
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
    _check_constant_beyond("decoder", far, values[:, far:])
    fill = np.full((values.shape[0], 1), torch.finfo(torch.float32).min, dtype=np.float32)
    return np.concatenate([values[:, :far + 1], fill], axis=1)[None]


def encoder_bias_table(model: Any) -> np.ndarray:
    """(2 * max_distance + 1, heads) float32: the encoder's self-attention bias at each distance key - query from
    -max_distance to max_distance (row d + max_distance), which is also the bias at every larger distance of that
    sign (T5's encoder buckets are bidirectional and saturate on both sides). Rows by distance, as the trace's own
    embedding is by bucket, so that the lookup copies a row of heads per (query, key)."""
    import torch

    attention = model.get_encoder().block[0].layer[0].SelfAttention
    far = int(model.config.relative_attention_max_distance)
    with torch.no_grad():
        # one query at position 2 * far over keys 0..4 * far: distances -2 * far .. 2 * far, the model's own buckets
        values = attention.compute_bias(1, 4 * far + 1, past_seen_tokens=2 * far)[0, :, 0].float().numpy()
    _check_constant_beyond("encoder", far, values[:, :far + 1], values[:, 3 * far:])
    return np.ascontiguousarray(values[:, far:3 * far + 1].T)


def _check_constant_beyond(stack: str, far: int, *blocks: np.ndarray) -> None:
    """Raise unless each (heads, distances) block of bias, the distances from max_distance outwards, holds one value
    per head: a table clipped at max_distance then reads what the buckets would give."""
    if not all(np.all(block == block[:, :1]) for block in blocks):
        raise ValueError(f"the {stack}'s position bias still changes past relative_attention_max_distance={far}: "
                         "its buckets are not T5's, so the bias cannot be read from a table")


def read_bias_from_table(path: Path, table: np.ndarray) -> int:
    """Rewrite the decoder-with-past graph at `path` so that its self-attentions (onnxruntime's MultiHeadAttention on
    a cache, as `export.fuse_attention` writes them) read their bias from `table` (`bias_table`); how many attentions
    were rewired. Nothing changes where they do not share one bias (not T5's decoder). `decoder_model.onnx`, run once
    per call, keeps the trace's: its layers each mask their own copy of the bias (OnnxT5 serves the first step from
    this graph on an empty past)."""
    far = table.shape[2] - 2

    def lookup(pasts: list[str], ints: Callable[[str, Any], str]) -> list[Any]:
        # the new tokens' positions past .. past + new - 1, over the keys 0 .. past + new - 1
        return [_node("Shape", [IDS_INPUT], "ids_shape"),
                _node("Gather", [_name("ids_shape"), ints("one", 1)], "new"),
                _node("Shape", [pasts[0]], "past_shape"),
                _node("Gather", [_name("past_shape"), ints("two", 2)], "past"),
                _node("Add", [_name("past"), _name("new")], "total"),
                _node("Range", [_name("past"), _name("total"), _name("one")], "queries"),
                _node("Range", [ints("start", 0), _name("total"), _name("one")], "keys"),
                _node("Unsqueeze", [_name("queries"), ints("column", [1])], "query_column"),
                _node("Sub", [_name("query_column"), _name("keys")], "distance"),
                _node("Clip", [_name("distance"), ints("masked", -1), ints("far", far)], "index"),
                _table_gather("index", 2, "bias")]

    return _rewire(path, table, lookup, with_past=True)


def read_encoder_bias_from_table(path: Path, table: np.ndarray) -> int:
    """Rewrite the encoder graph at `path` so that its self-attentions (MultiHeadAttention, as
    `export.fuse_attention` writes them) read their (1, heads, length, length) bias from `table`
    (`encoder_bias_table`) with index clip(key - query, -max_distance, max_distance) + max_distance, where the trace
    computes T5's buckets over every (query, key) pair of each call (a Log, Divs, Mins, Wheres over length x length
    numbers, then a transpose); how many attentions were rewired, 0 where they do not share one bias."""
    far = (table.shape[0] - 1) // 2

    def lookup(pasts: list[str], ints: Callable[[str, Any], str]) -> list[Any]:
        # keys shifted by max_distance, so that one Sub gives key - query + max_distance
        return [_node("Shape", [IDS_INPUT], "ids_shape"),
                _node("Gather", [_name("ids_shape"), ints("one", 1)], "length"),
                _node("Range", [ints("start", 0), _name("length"), _name("one")], "queries"),
                _node("Add", [_name("length"), ints("far", far)], "key_end"),
                _node("Range", [_name("far"), _name("key_end"), _name("one")], "keys"),
                _node("Unsqueeze", [_name("queries"), ints("column", [1])], "query_column"),
                _node("Sub", [_name("keys"), _name("query_column")], "distance"),
                _node("Clip", [_name("distance"), ints("nearest", 0), ints("widest", 2 * far)], "index"),
                # (length, length, heads), then heads first: a Gather along the table's last axis would give that
                # layout directly but copies one float at a time, slower than both (docs/architecture.md)
                _table_gather("index", 0, "rows"),
                _node("Transpose", [_name("rows")], "heads_first", perm=[2, 0, 1]),
                _node("Unsqueeze", [_name("heads_first"), ints("batch_axis", [0])], "bias")]

    return _rewire(path, table, lookup, with_past=False)


def _name(part: str) -> str:
    return PREFIX + part


def _node(op: str, inputs: list[str], output: str, **attributes: Any) -> Any:
    from onnx import helper

    return helper.make_node(op, inputs, [_name(output)], name=_name(output), **attributes)


def _table_gather(index: str, axis: int, output: str) -> Any:
    """The table's lookup, named as the trace names the one it replaces, which the int8 and 4-bit passes keep fp32
    by that name."""
    from onnx import helper

    return helper.make_node("Gather", [TABLE, _name(index)], [_name(output)],
                            name=_name("relative_attention_bias/Gather"), axis=axis)


def _rewire(path: Path, table: np.ndarray, lookup: Callable[[list[str], Callable[[str, Any], str]], list[Any]],
            with_past: bool) -> int:
    """The self-attentions of the graph at `path` (MultiHeadAttention with a bias; on a cache exactly when
    `with_past`) made to read their one shared bias from `table` (its heads on axis 1), as the nodes
    `lookup(pasts, ints)` returns compute it (into PREFIX + "bias"; `ints` makes a named int64 Constant)."""
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
    if len(biases) != 1 or (pasts and not with_past):
        return 0
    if with_past and (not pasts or len(pasts) != len(attentions) or not set(pasts) <= inputs):
        return 0
    heads = {a.i for n in attentions for a in n.attribute if a.name == "num_heads"}
    if heads != {table.shape[1]}:
        raise ValueError(f"{path.name}: the attentions have {sorted(heads)} heads, the position table "
                         f"{table.shape[1]}")

    constants: list[Any] = []

    def ints(part: str, values: Any) -> str:  # Constant nodes, as the trace writes its own: not weights
        constants.append(helper.make_node("Constant", [], [_name(part)], name=_name(part),
                                          value=numpy_helper.from_array(np.asarray(values, dtype=np.int64))))
        return _name(part)

    # in the graph's data file with its other weights (a few kB: heads x a few hundred floats)
    data = DataFile(path.with_name(data_name(path.name)), extend=True)
    try:
        graph.initializer.append(data.append(TABLE, table.shape, TensorProto.FLOAT,
                                             [np.ascontiguousarray(table, dtype=np.float32).tobytes()]))
    finally:
        data.close()
    nodes = lookup(pasts, ints)
    nodes = constants + nodes
    for node in reversed(nodes):  # before every reader: they read only graph inputs, initializers and each other
        graph.node.insert(0, node)
    graph.value_info.append(helper.make_tensor_value_info(_name("bias"), TensorProto.FLOAT,
                                                          [1, table.shape[1], None, None]))
    for node in attentions:
        node.input[5] = _name("bias")
    remove_dead_nodes(graph)
    read = {i for node in graph.node for i in node.input}
    for unread in [t for t in graph.initializer if t.name not in read]:  # the trace's bias embedding
        graph.initializer.remove(unread)
    save_rewritten(model, path)
    return len(attentions)
