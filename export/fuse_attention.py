"""T5's attention as onnxruntime's MultiHeadAttention: one node where the trace wrote about twenty, in every attention
of every layer of every graph.

The traced attention reshapes and transposes q, k and v into heads, concatenates the new keys and values onto the
cache, multiplies, adds the position bias, runs the softmax, multiplies again and transposes back; at batch 1 each of
those nodes costs a few microseconds, more than its arithmetic. `MultiHeadAttention` (com.microsoft, with CPU and CUDA
kernels) takes the projections, the cache and what is added to the scores, and returns the context and the grown
cache. Three kinds:

- on a cache (the decoder with past's self-attention): query, key, value = the q, k, v projections (rows, new tokens,
  d_model); past_key/past_value = the cache inputs; present_key/present_value = the cache outputs, under their names;
- plain (the encoder's, the first step's): query, key, value = the projections; the heads the graph outputs as cache
  (the first step's present K/V) are still computed for those outputs;
- grouped (`SharedCrossAttention`, the beams of an input as its query positions): query = the q projection as
  (inputs, beams * new tokens, d_model); key, value = the cached (inputs, heads, encoder length, d_kv) inputs.

What the trace adds to the scores becomes attention_bias when it has the scores' query and key lengths (T5's position
bias, with the causal mask in it), or key_padding_mask = `encoder_attention_mask` when the encoder's mask is the only
input whose values it reads (cross-attention, which is checked). Where that bias is Where(padding mask, a position
bias the same for every row, fill), as in the encoder, attention_bias is the position bias and key_padding_mask the
mask's input, once a probe has shown the mask to be key padding (`export.key_padding`); a zero position bias
(cross-attention's) is then left out. T5 does not scale the scores: the scale is read from the constants the trace
multiplies by (1.0 for T5). Each rewrite is checked against onnxruntime's symbolic shapes
(`export.static_shapes.inferred_shapes`); an attention that does not match exactly stays as traced, and `validate`
compares the fused graphs with PyTorch.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.key_padding import key_padding_source
from export.static_shapes import inferred_shapes
from export.surgery import MS_DOMAIN, attribute, constant_value, has_subgraphs, save_rewritten

FLOAT, INT32, INT64 = 1, 6, 7  # onnx.TensorProto's element types
MASK_INPUT = "encoder_attention_mask"
PREFIX = "fuse_attention/"  # the names of what this pass adds
# grouped cross-attention's two Reshapes, into the queries per input and back to rows, are named PREFIX{n}_{these}
GROUP_QUERY, GROUP_ROWS = "query", "rows"
MASKED = -1e4  # a fill value at most this is a mask (T5's is the dtype's minimum)


def grouping(node: Any) -> str | None:
    """GROUP_QUERY or GROUP_ROWS when `node` is one of the Reshapes this pass adds around a grouped cross-attention,
    else None."""
    kind = node.name.rsplit("_", 1)[-1] if node.op_type == "Reshape" and node.name.startswith(PREFIX) else None
    return kind if kind in (GROUP_QUERY, GROUP_ROWS) else None


def ungroup(graph: Any) -> None:
    """Route `graph` around its grouped cross-attentions' Reshapes (`grouping`), for a graph whose every input has one
    row of queries: the BeamSearch op's decoder subgraph (the op repeats the encoder K/V and mask for every beam) and
    the one-row graph (`export.one_row`: one input, one sequence).

    The with-past graph keeps one row of encoder K/V and mask per input and groups each input's beams as the queries
    of that row; with a row per input both Reshapes leave their tensor as it is. The shape arithmetic that fed them is
    left to `export.surgery.remove_dead_nodes`."""
    producer = {out: node for node in graph.node for out in node.output}
    removed = []
    for node in graph.node:
        kind = grouping(node)
        if kind == GROUP_QUERY:  # the projection's (rows, 1, d_model) is already the queries of each row
            heads = producer.get(node.input[0])
            if heads is None or heads.op_type != "Reshape":
                raise ValueError(f"{graph.name}: {node.name} does not read a Reshape of the projection")
            removed.append((node.output[0], heads.input[0]))
        elif kind == GROUP_ROWS:
            removed.append((node.output[0], node.input[0]))
    for old, new in removed:
        for reader in graph.node:
            reader.input[:] = [new if name == old else name for name in reader.input]


class _Graph:
    """Producers, consumers, inputs and shapes of a graph, and the constant scalars it computes."""

    def __init__(self, model: Any, shapes: dict[str, Any]):
        self.model, self.graph, self.shapes = model, model.graph, shapes
        graph = model.graph
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.inputs = {i.name for i in graph.input}
        self.outputs = {o.name for o in graph.output}
        self.initializers = {t.name: t for t in graph.initializer}

    def made_by(self, name: str, op: str) -> Any:
        node = self.producer.get(name)
        return node if node is not None and node.op_type == op else None

    def back(self, name: str) -> str:
        """`name` before any Cast to float (the trace's `.float()` and `.type_as`)."""
        while (cast := self.made_by(name, "Cast")) is not None and attribute(cast, "to") == FLOAT:
            name = cast.input[0]
        return name

    def only_reader(self, name: str) -> Any:
        readers = self.consumers.get(name, [])
        return readers[0] if len(readers) == 1 and name not in self.outputs else None

    def forward(self, name: str) -> str:
        """`name` after any Cast to float that is its only reader."""
        while ((node := self.only_reader(name)) is not None and node.op_type == "Cast"
               and attribute(node, "to") == FLOAT):
            name = node.output[0]
        return name

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant (folded through Cast, Sqrt, Identity, Mul and Div), else None."""
        constant = constant_value(name, self.producer, self.initializers)
        if constant is not None:
            return float(constant.reshape(-1)[0]) if constant.size == 1 else None
        node = self.producer.get(name)
        if node is None or node.op_type == "Constant":
            return None
        ops: dict[str, Callable[..., float]] = {"Cast": lambda x: x, "Identity": lambda x: x,
                                                "Sqrt": lambda x: float(np.sqrt(x)), "Mul": lambda x, y: x * y,
                                                "Div": lambda x, y: x / y}
        if node.op_type not in ops:
            return None
        args = []
        for name_in in node.input:  # stops at the first input that is not constant: no walk through the graph
            if (value := self.scalar(name_in)) is None:
                return None
            args.append(value)
        return ops[node.op_type](*args)

    def unscale(self, name: str) -> tuple[str, float] | None:
        """`name` before any multiplications by constant scalars, and their product; None for another Mul."""
        scale, name = 1.0, self.back(name)
        while (mul := self.made_by(name, "Mul")) is not None:
            values = [self.scalar(i) for i in mul.input]
            if values[1] is not None:
                scale, name = scale * values[1], self.back(mul.input[0])
            elif values[0] is not None:
                scale, name = scale * values[0], self.back(mul.input[1])
            else:
                return None
        return name, scale

    def values_behind(self, name: str) -> set[str]:
        """The graph inputs whose values `name` is computed from (a Shape reads only its input's shape)."""
        found, todo, seen = set(), [name], set()
        while todo:
            current = todo.pop()
            if current in seen:
                continue
            seen.add(current)
            if current in self.inputs:
                found.add(current)
            elif current in self.producer and self.producer[current].op_type != "Shape":
                todo.extend(self.producer[current].input)
        return found


def _heads(g: _Graph, source: str, transposed: str) -> tuple[int, int] | None:
    """(heads, d_kv) when `transposed` is Transpose(0, 2, 1, 3) of a Reshape of `source` (rows, tokens, d_model) into
    (rows, tokens, heads, d_kv), as `view(...).transpose(1, 2)` traces; else None."""
    transpose = g.made_by(transposed, "Transpose")
    if transpose is None or list(attribute(transpose, "perm", [])) != [0, 2, 1, 3]:
        return None
    reshape = g.made_by(transpose.input[0], "Reshape")
    if reshape is None or reshape.input[0] != source:
        return None
    src, out = g.shapes.get(source), g.shapes.get(reshape.output[0])
    if not src or not out or len(src) != 3 or len(out) != 4 or not all(isinstance(d, int) for d in (*out[2:], src[2])):
        return None
    return (out[2], out[3]) if out[2] * out[3] == src[2] else None


def _split(g: _Graph, reshaped: str) -> str | None:
    """The (rows, tokens, d_model) tensor that `reshaped` splits into (rows, tokens, heads, d_kv), else None."""
    reshape = g.made_by(reshaped, "Reshape")
    if reshape is None:
        return None
    src, out = g.shapes.get(reshape.input[0]), g.shapes.get(reshaped)
    if not src or not out or len(src) != 3 or len(out) != 4 or out[:2] != src[:2]:
        return None
    if not all(isinstance(d, int) for d in (*out[2:], src[2])) or out[2] * out[3] != src[2]:
        return None
    return reshape.input[0]


def _projection(g: _Graph, transposed: str) -> str | None:
    """The (rows, tokens, d_model) tensor that `transposed` splits into (rows, heads, tokens, d_kv), else None."""
    transpose = g.made_by(transposed, "Transpose")
    if transpose is None or list(attribute(transpose, "perm", [])) != [0, 2, 1, 3]:
        return None
    return _split(g, transpose.input[0])


def _cache(g: _Graph, name: str) -> tuple[str, str, str] | None:
    """(past input, new projection, new heads) when `name` is the cache Concat of a past input and new heads."""
    concat = g.made_by(name, "Concat")
    if concat is None or len(concat.input) != 2 or attribute(concat, "axis") not in (2, -2):
        return None
    past, new = concat.input
    source = _projection(g, new)
    return (past, source, new) if past in g.inputs and source is not None else None


def _match(g: _Graph, softmax: Any) -> dict[str, Any] | None:
    """What replaces the attention around `softmax`, or None where it is not T5's attention exactly."""
    if attribute(softmax, "axis", -1) not in (-1, 3):
        return None
    scores = g.back(softmax.input[0])
    adjust, bias, mask = g.producer.get(scores), None, None
    if adjust is not None and adjust.op_type == "Where":
        mask, fill, scores = adjust.input
        fill_value = g.scalar(fill)
        if fill_value is None or fill_value > MASKED:
            return None
    elif adjust is not None and adjust.op_type == "Add":
        sides = [g.unscale(i) for i in adjust.input]
        picks = [k for k, side in enumerate(sides) if side and g.made_by(side[0], "MatMul") is not None]
        if len(picks) != 1:
            return None
        scores, bias = adjust.input[picks[0]], adjust.input[1 - picks[0]]
    unscaled = g.unscale(scores)
    qk = g.made_by(unscaled[0], "MatMul") if unscaled else None
    if qk is None or unscaled is None:
        return None
    query, key_t = g.unscale(qk.input[0]), g.unscale(qk.input[1])
    if query is None or key_t is None:
        return None
    scale = unscaled[1] * query[1] * key_t[1]
    transpose_k = g.made_by(key_t[0], "Transpose")
    # the keys transposed for the scores: from the heads (0, 1, 3, 2), or straight from the split projection
    # (0, 2, 3, 1: the trace merges `.transpose(1, 2)` and `.transpose(2, 3)` where the heads are read nowhere else)
    perm = list(attribute(transpose_k, "perm", [])) if transpose_k is not None else None
    if scale == 0 or perm not in ([0, 1, 3, 2], [0, 2, 3, 1]):
        return None
    probs = g.forward(softmax.output[0])
    context = g.only_reader(probs)
    if context is None or context.op_type != "MatMul" or context.input[0] != probs:
        return None
    # after the context: Reshapes and one Transpose(0, 2, 1, 3) back to (rows, tokens, d_model)
    chain, name = [], context.output[0]
    while (node := g.only_reader(name)) is not None and node.op_type in ("Reshape", "Transpose"):
        chain.append(node)
        name = node.output[0]
    transposes = [n for n in chain if n.op_type == "Transpose"]
    ctx_dims, end_dims = g.shapes.get(context.output[0]), g.shapes.get(name)
    if (len(transposes) != 1 or list(attribute(transposes[0], "perm", [])) != [0, 2, 1, 3] or not ctx_dims
            or g.shapes.get(transposes[0].input[0]) != ctx_dims or not end_dims or len(end_dims) != 3
            or name in g.outputs):
        return None
    q_transpose = g.made_by(query[0], "Transpose")
    q_reshape = g.made_by(q_transpose.input[0], "Reshape") if q_transpose is not None else None
    if q_reshape is None:
        return None
    heads = _heads(g, q_reshape.input[0], query[0])
    if heads is None or end_dims[2] != heads[0] * heads[1]:
        return None
    plan = {"softmax": softmax, "heads": heads, "scale": scale, "end": name, "chain": chain,
            "name": softmax.name.rsplit("/", 1)[0] + "/MultiHeadAttention"}
    key, value = transpose_k.input[0], context.input[1]
    # what is added to the scores: an attention bias of the scores' own query and key lengths, or else a mask that
    # reads only the encoder's mask (key padding: the same for every query position)
    padding = None
    added = mask if mask is not None else bias
    if added is not None:
        b, s = g.shapes.get(bias) if bias else None, g.shapes.get(scores)
        fits = bool(b and s and len(b) == 4 and b[2:] == s[2:] and b[1] in (1, s[1]) and b[0] in (1, s[0]))
        if mask is None and fits and bias is not None and s is not None:
            bias, padding = _split_padding(g, bias, s)
        elif MASK_INPUT in g.inputs and g.values_behind(added) == {MASK_INPUT}:
            padding, bias = MASK_INPUT, None
        else:
            return None
    plan |= {"bias": bias, "padding": padding}
    if key in g.inputs and value in g.inputs:  # cross-attention on the cached encoder K/V, queries grouped per input
        if padding is None or perm != [0, 1, 3, 2] or chain[-1].op_type != "Reshape":
            return None
        return plan | {"kind": "grouped", "query": q_reshape.output[0], "key": key, "value": value}
    source = _projection(g, query[0])
    if source is None or end_dims != g.shapes.get(source):
        return None
    own_key, own_value = (_cache(g, key), _cache(g, value)) if perm == [0, 1, 3, 2] else (None, None)
    if own_key is None or own_value is None:  # no cache: the keys and values are this graph's projections
        sources = _projection(g, key) if perm == [0, 1, 3, 2] else _split(g, key), _projection(g, value)
        if None in sources:
            return None
        return plan | {"kind": "plain", "query": source, "key": sources[0], "value": sources[1]}
    for cached in (key, value):  # besides this attention, only Shape nodes may read the grown cache
        readers = [n for n in g.consumers.get(cached, []) if n is not transpose_k and n is not context]
        if any(n.op_type != "Shape" or n.attribute for n in readers):
            return None
    return plan | {"kind": "cache", "query": source, "key": key, "value": value, "own_key": own_key,
                   "own_value": own_value}


def _split_padding(g: _Graph, bias: str, scores: list[Any]) -> tuple[str | None, str | None]:
    """(what stays attention_bias, or None; the key padding input, or None) for an attention bias that is
    Where(key padding mask, position bias, a fill value) with a position bias the same for every row (the encoder's):
    MultiHeadAttention then reads the (1, heads, query, key) position bias and a (rows, key) mask instead of a
    (rows, heads, query, key) tensor made for it (`export.key_padding`); no attention_bias where the position bias is
    zeros (cross-attention's)."""
    from onnx import numpy_helper

    where = g.made_by(bias, "Where")
    if where is None:
        return bias, None
    keep, kept, fill = where.input
    fill_value, dims = g.scalar(fill), g.shapes.get(kept)
    if (fill_value is None or fill_value > MASKED or not dims or len(dims) != 4 or dims[0] != 1
            or dims[1] not in (1, scores[1]) or dims[2:] != scores[2:]):
        return bias, None
    source = key_padding_source(g.model, g.producer, g.shapes, keep, g.values_behind(keep))
    if source is None:
        return bias, None
    zeros = g.made_by(kept, "ConstantOfShape")  # cross-attention's bias: no position bias, only the mask
    value = attribute(zeros, "value") if zeros is not None else None
    if zeros is not None and (value is None or not numpy_helper.to_array(value).any()):
        return None, source
    return kept, source


def _toposort(graph: Any) -> None:
    """Order the nodes so that each comes after the producers of its inputs, otherwise keeping their order."""
    producer = {out: k for k, node in enumerate(graph.node) for out in node.output}
    waiting = [sum(1 for i in set(node.input) if i in producer) for node in graph.node]
    readers: dict[int, list[int]] = defaultdict(list)
    for k, node in enumerate(graph.node):
        for i in set(node.input):
            if i in producer:
                readers[producer[i]].append(k)
    ready = deque(k for k, count in enumerate(waiting) if count == 0)
    order = []
    while ready:
        k = ready.popleft()
        order.append(k)
        for reader in readers[k]:
            waiting[reader] -= 1
            if waiting[reader] == 0:
                ready.append(reader)
    if len(order) != len(graph.node):
        raise ValueError("fuse_attention: the rewritten graph has a cycle")
    nodes = [graph.node[k] for k in order]
    del graph.node[:]
    graph.node.extend(nodes)


def fuse_attention(path: Path) -> int:
    """Rewrite the attentions of the graph at `path` (external data stays where it is); how many."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if has_subgraphs(graph):
        return 0
    shapes = inferred_shapes(model)
    if not shapes:
        return 0
    g = _Graph(model, shapes)
    plans = [p for p in (_match(g, n) for n in list(graph.node) if n.op_type == "Softmax") if p is not None]
    if not plans:
        return 0
    added: list[Any] = []
    shared: dict[str, str] = {}

    def const(values: list[int], name: str) -> str:
        added.append(helper.make_node("Constant", [], [name], name=name,
                                      value=numpy_helper.from_array(np.asarray(values, dtype=np.int64))))
        return name

    def typed(name: str, elem_type: int, dims: list[Any] | None) -> None:
        """Declare what the pass adds: onnx's shape inference cannot see through a com.microsoft op, and tools that
        rely on it (onnxruntime's quantizer) need the types of what follows."""
        graph.value_info.append(helper.make_tensor_value_info(name, elem_type, dims))

    def rewire(old: str, new: str) -> None:
        for node in g.consumers.get(old, []):
            for k, name in enumerate(node.input):
                if name == old:
                    node.input[k] = new

    removed = []
    for n, plan in enumerate(plans):
        heads, width = plan["heads"][0], plan["heads"][0] * plan["heads"][1]
        tag = f"{PREFIX}{n}_"
        out = tag + "context"
        attrs = {"num_heads": heads, "scale": float(plan["scale"]), "domain": MS_DOMAIN, "name": plan["name"]}
        mask = ""
        if plan["padding"]:
            source = plan["padding"]
            if source not in shared:
                shared[source] = PREFIX + "key_padding_mask" + (f"_{len(shared)}" if shared else "")
                added.append(helper.make_node("Cast", [source], [shared[source]], name=shared[source], to=INT32))
                typed(shared[source], INT32, shapes.get(source))
            mask = shared[source]
        if plan["kind"] == "cache":
            (past_k, new_k, heads_k), (past_v, new_v, _) = plan["own_key"], plan["own_value"]
            inputs = [plan["query"], new_k, new_v, "", mask, plan["bias"] or "", past_k, past_v]
            added.append(helper.make_node("MultiHeadAttention", inputs, [out, plan["key"], plan["value"]], **attrs))
            typed(out, FLOAT, shapes.get(plan["end"]))
            for cached in (plan["key"], plan["value"]):
                removed.append(g.producer[cached])  # the Concat: MultiHeadAttention writes the grown cache now
            # a Shape of the grown cache, read before the attention (the position bias's key length), is computed
            # from its parts instead: Shape(past) + Shape(new heads) * [0, 0, 1, 0] (they are joined along axis 2)
            readers = [r for c in (plan["key"], plan["value"]) for r in g.consumers.get(c, []) if r.op_type == "Shape"]
            if readers:
                names = [tag + s for s in ("past_shape", "new_shape", "axis", "grown", "shape")]
                added += [helper.make_node("Shape", [past_k], [names[0]], name=names[0]),
                          helper.make_node("Shape", [heads_k], [names[1]], name=names[1])]
                const([0, 0, 1, 0], names[2])
                added += [helper.make_node("Mul", [names[1], names[2]], [names[3]], name=names[3]),
                          helper.make_node("Add", [names[0], names[3]], [names[4]], name=names[4])]
                typed(names[4], INT64, [4])
                for reader in readers:
                    rewire(reader.output[0], names[4])
            rewire(plan["end"], out)
        elif plan["kind"] == "plain":
            inputs = [plan["query"], plan["key"], plan["value"], "", mask, plan["bias"] or ""]
            added.append(helper.make_node("MultiHeadAttention", inputs, [out], **attrs))
            typed(out, FLOAT, shapes.get(plan["end"]))
            rewire(plan["end"], out)
        else:
            query = tag + GROUP_QUERY
            added.append(helper.make_node("Reshape", [plan["query"], const([0, 0, width], tag + "query_shape")],
                                          [query], name=query))
            added.append(helper.make_node("MultiHeadAttention", [query, plan["key"], plan["value"], "", mask], [out],
                                          **attrs))
            grouped = [*(shapes.get(plan["query"]) or [None, None])[:2], width]
            typed(query, FLOAT, grouped)
            typed(out, FLOAT, grouped)
            back = tag + GROUP_ROWS  # (inputs, beams * tokens, d_model) back to (rows, tokens, d_model)
            added.append(helper.make_node("Reshape", [out, plan["chain"][-1].input[1]], [back], name=back))
            typed(back, FLOAT, shapes.get(plan["end"]))
            rewire(plan["end"], back)
    for node in removed:
        graph.node.remove(node)
    graph.node.extend(added)
    _toposort(graph)
    save_rewritten(model, path)
    return len(plans)
