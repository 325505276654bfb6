"""Each residual addition and the RMS layer norm that reads it as one onnxruntime SkipSimplifiedLayerNormalization.

A T5 layer adds each sub-layer's output into the residual stream and normalizes the sum for the next sub-layer
(`T5LayerNorm`: x / sqrt(mean(x^2) + eps) * weight, no mean subtracted, no bias). The trace writes the addition, a
Cast of the sum to fp32 (T5's layer norm computes its variance in fp32; the graphs are fp32 already) and seven nodes
of the norm. onnxruntime fuses the seven into SimplifiedLayerNormalization when it loads the graph, but on the CPU
it does not take the addition in: the residual Adds stay nodes of their own, three a decoder layer per step, each a
few microseconds at batch 1 for a few hundred floats. com.microsoft's SkipSimplifiedLayerNormalization (CPU and CUDA
kernels) returns both the normalized sum and the sum, which the next residual addition reads. onnxruntime's own
`FusionSkipSimplifiedLayerNormalization` (in `onnxruntime.transformers`) needs the norm fused first and the Cast gone;
this pass reads the traced pattern directly, as `export.fuse_attention` does.

The fused node is named after the norm's module (`.../layer_norm/SkipSimplifiedLayerNormalization`), so that the
fp16/bf16 conversion keeps it fp32 as it keeps the norm and the residual additions (`export.precision`). A norm whose
input is no residual addition (the first one, on the embeddings) stays as traced; so does one whose shapes onnxruntime's
symbolic shape inference cannot name as two equal (rows, tokens, d_model) tensors. `validate` compares the graphs with
PyTorch as always.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from export.static_shapes import inferred_shapes
from export.surgery import MS_DOMAIN, attribute, constant_value, has_subgraphs, save_rewritten

FLOAT = 1  # onnx.TensorProto.FLOAT


def fuse_skip_norms(path: Path) -> int:
    """Rewrite the residual additions and the RMS norms that read them in the graph at `path` (external data stays
    where it is); how many."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    if has_subgraphs(graph):
        return 0
    producer = {out: node for node in graph.node for out in node.output}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    initializers = {t.name: t for t in graph.initializer}
    shapes: dict[str, Any] | None = None

    def made_by(name: str, op: str) -> Any:
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    def scalar(name: str) -> float | None:
        value = constant_value(name, producer, initializers)
        return float(value.reshape(-1)[0]) if value is not None and value.size == 1 else None

    fused: list[tuple[Any, ...]] = []
    for scale in [n for n in graph.node if n.op_type == "Mul"]:
        # Mul(weight, Mul(x, Div(1, Sqrt(Add(ReduceMean(Pow(x, 2)), eps))))), the weight on either side
        weights = [i for i in scale.input if i in initializers and len(initializers[i].dims) == 1]
        normed = [made_by(i, "Mul") for i in scale.input if i not in weights]
        if len(weights) != 1 or len(normed) != 1 or normed[0] is None:
            continue
        mul = normed[0]
        for x, inv in (mul.input, mul.input[::-1]):
            div = made_by(inv, "Div")
            sqrt = made_by(div.input[1], "Sqrt") if div is not None and scalar(div.input[0]) == 1.0 else None
            add_eps = made_by(sqrt.input[0], "Add") if sqrt is not None else None
            if add_eps is None:
                continue
            eps = [scalar(i) for i in add_eps.input]
            mean = next((made_by(i, "ReduceMean") for i, e in zip(add_eps.input, eps, strict=True) if e is None),
                        None)
            pow_ = made_by(mean.input[0], "Pow") if mean is not None else None
            if pow_ is not None and pow_.input[0] == x and scalar(pow_.input[1]) == 2.0 and _last_axis(mean, scalar):
                break
        else:
            continue
        # the residual sum, behind an fp32 Cast of it (an identity: the graph is fp32)
        cast = made_by(x, "Cast")
        total = cast.input[0] if cast is not None and attribute(cast, "to") == FLOAT else x
        residual = made_by(total, "Add")
        if residual is None or any(i in initializers or (i in producer and producer[i].op_type == "Constant")
                                   for i in residual.input):
            continue
        if shapes is None:
            shapes = inferred_shapes(model)
        dims = [shapes.get(i) for i in residual.input]
        if not dims[0] or len(dims[0]) != 3 or dims[0] != dims[1]:
            continue
        eps_value = next(e for e in eps if e is not None)
        fused.append((scale, mul, (pow_, mean, add_eps, sqrt, div), cast if total != x else None, residual,
                      weights[0], float(eps_value), dims[0]))

    if not fused:
        return 0
    removed = set()
    declared = {v.name for v in graph.value_info}
    for scale, mul, chain, cast, residual, weight, epsilon, sum_dims in fused:
        total = residual.output[0]
        x = cast.output[0] if cast is not None else total
        module = scale.name.rsplit("/", 1)[0] if "/" in scale.name else scale.name
        node = helper.make_node("SkipSimplifiedLayerNormalization", [residual.input[0], residual.input[1], weight],
                                [scale.output[0], "", "", total], name=f"{module}/SkipSimplifiedLayerNormalization",
                                domain=MS_DOMAIN, epsilon=epsilon)
        graph.node.insert(list(graph.node).index(residual), node)  # where the sum was made: readers come after
        removed |= {id(n) for n in (scale, mul, *chain, residual)}
        # onnx's shape inference cannot see through a contrib op; onnxruntime's quantizer needs what follows typed
        for name in (scale.output[0], total):
            if name not in declared:
                graph.value_info.append(helper.make_tensor_value_info(name, FLOAT, sum_dims))
        # whatever else read the sum (through the Cast: the next residual addition) reads the fused node's sum
        if cast is not None:
            for other in readers.get(x, []):
                for k, name in enumerate(other.input):
                    if name == x:
                        other.input[k] = total
    for node in [n for n in graph.node if id(n) in removed]:
        graph.node.remove(node)
    save_rewritten(model, path)
    return len(fused)


def _last_axis(mean: Any, scalar: Any) -> bool:
    """Whether the ReduceMean averages over the last axis only, keeping it (axes as attribute, or as input >= 18)."""
    if attribute(mean, "keepdims", 1) != 1:
        return False
    axes = attribute(mean, "axes")
    if axes is None and len(mean.input) > 1:
        value = scalar(mean.input[1])
        axes = None if value is None else [int(value)]
    return axes is not None and list(axes) == [-1]
