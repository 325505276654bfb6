"""One decoder graph for both steps, as optimum merges them: `decoder_model_merged.onnx` (+ `.onnx_data`).

The first-step graph and the with-past graph hold the same decoder weights: two sessions keep (and onnxruntime
prepacks) lm_head and every decoder layer twice. The merged graph holds each weight once at its top level and both
graphs as the branches of an `If` on the input `use_cache_branch` (bool, shape [1]):

    inputs   input_ids, encoder_attention_mask, encoder_hidden_states, past_key_values.{i}.decoder|encoder.key|value,
             use_cache_branch
    outputs  logits, present.{i}.decoder.key|value, present.{i}.encoder.key|value
    False    the first step: reads encoder_hidden_states; the past inputs are not read (feed them with length 0)
    True     new tokens on the cache: reads the past inputs; encoder_hidden_states is not read (any (B, 0, d_model)).
             Its present.{i}.encoder.* are empty constants, as optimum's: the cross-attention K/V never change, so the
             caller keeps the ones it fed (transformers.js does exactly that) and nothing is copied per step.

lm_head's MatMul, in both branches alike (the fp32 graphs), runs once after the `If`, which outputs the hidden
states it multiplies (`_hoist_lm_head`): onnxruntime prepacks a constant MatMul weight per node, so a branch each would
pack the largest matrix twice while loading.

Initializers are the same tensor when their dims, data type and bytes are (sha256 streamed from the data files),
whatever the exporter named them; the small int shape constants stay inside their branch, as optimum keeps them
("ONNX Runtime breaks after optimization + merge if they are not"). Node and value names of each branch are prefixed
so that the two never meet. The merged weights are written one tensor at a time, never a whole graph's in memory.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from export.layout import data_name
from export.weights import copy_weights, save_derived, tensor_blocks

BRANCH_PREFIX = {False: "first_step/", True: "with_past/"}  # node and value names of each branch
USE_CACHE = "use_cache_branch"
LOGITS = "logits"
LM_HEAD_INPUT = "merged::lm_head_input"  # what the If computes and the hoisted lm_head MatMul reads


def _is_branch_constant(tensor: Any) -> bool:
    """optimum's rule for the initializers that stay in their branch: scalars and 1-D int32/int64 (shapes, axes)."""
    import onnx

    return len(tensor.dims) == 0 or (len(tensor.dims) == 1 and tensor.data_type in (onnx.TensorProto.INT32,
                                                                                    onnx.TensorProto.INT64))


def _content_key(folder: Path, tensor: Any) -> tuple[Any, ...]:
    digest = hashlib.sha256()
    for block in tensor_blocks(folder, tensor):
        digest.update(block)
    return tuple(tensor.dims), tensor.data_type, digest.hexdigest()


def _rename(node: Any, names: dict[str, str], prefix: str, outer: set[str]) -> None:
    """Give `node` and every value it reads or writes its branch's name (weights their shared name, graph inputs
    theirs)."""
    if any(attr.type in (attr.GRAPH, attr.GRAPHS) for attr in node.attribute):
        raise ValueError(f"node {node.name} ({node.op_type}) has a subgraph; merging supports flat decoder graphs only")
    node.name = prefix + node.name
    for values in (node.input, node.output):
        for k, name in enumerate(values):
            if name and name not in outer:
                values[k] = names.get(name, prefix + name)


def _unknown_dims(value: Any) -> Any:
    """`value` with every dimension left unnamed: the branches name their lengths and batches differently."""
    copy = type(value)()
    copy.CopyFrom(value)
    for dim in copy.type.tensor_type.shape.dim:
        if not dim.HasField("dim_value"):
            dim.Clear()
    return copy


def _hoist_lm_head(branches: dict[bool, tuple[list[Any], list[Any], list[Any]]], weights: set[str]) -> Any:
    """Take the MatMul that computes `logits` out of both branches when both multiply by the same top-level weight
    (the fp32 graphs; where another op computes the logits, as in the int8 and 4-bit graphs, the branches stay as
    they are): each branch then ends
    with the hidden states it multiplied, and one MatMul after the `If` (returned; None when nothing was hoisted)
    computes the logits. onnxruntime prepacks a MatMul's constant weight for each node that reads it, and only then
    shares equal packed copies within a session: lm_head read by both branches was packed twice, a transient second
    copy of the largest matrix (250,112 x 512 fp32, 512 MB, on mT5) at every load. `branches`: per branch, (nodes,
    outputs, local initializers), changed in place."""
    import onnx

    found = {}
    for use_cache, (nodes, _, _) in branches.items():
        name = BRANCH_PREFIX[use_cache] + LOGITS
        node = next((n for n in nodes if name in n.output), None)
        if node is None or node.op_type != "MatMul" or node.input[1] not in weights:
            return None
        found[use_cache] = node
    if found[False].input[1] != found[True].input[1]:
        return None
    for use_cache, node in found.items():
        nodes, outputs, _ = branches[use_cache]
        nodes.remove(node)
        k = next(i for i, value in enumerate(outputs) if value.name == node.output[0])
        outputs[k] = onnx.helper.make_tensor_value_info(node.input[0], outputs[k].type.tensor_type.elem_type,
                                                        [None] * len(outputs[k].type.tensor_type.shape.dim))
    return onnx.helper.make_node("MatMul", [LM_HEAD_INPUT, found[False].input[1]], [LOGITS], name="merged::lm_head")


def merge_decoders(folder: Path, first: str, with_past: str, merged: str) -> int:
    """Write `merged` (and its data file) in `folder` from the graphs `first` and `with_past` there (each with its
    weights in its own data file, or inline); returns the bytes of weights written."""
    import onnx

    graphs = {False: onnx.load(str(folder / first), load_external_data=False),
              True: onnx.load(str(folder / with_past), load_external_data=False)}
    opsets = [{o.domain: o.version for o in g.opset_import} for g in graphs.values()]
    if any(opsets[0][d] != opsets[1][d] for d in opsets[0].keys() & opsets[1].keys()):
        raise ValueError(f"{first} and {with_past} have different opsets ({opsets}); export them together")
    # a domain only one branch uses (com.microsoft: the with-past graph's fused attention) is the merged graph's too
    base = graphs[False]
    for domain, version in opsets[1].items():
        if domain not in opsets[0]:
            base.opset_import.append(onnx.helper.make_opsetid(domain, version))
    top_inputs: dict[str, Any] = {}
    for use_cache in (False, True):
        for value in graphs[use_cache].graph.input:
            top_inputs.setdefault(value.name, value)
    outer = set(top_inputs)
    # every shared weight under one name: the first name it had (the first step's), unless another weight took it
    shared: dict[tuple[Any, ...], str] = {}
    sources: dict[str, Any] = {}  # merged name -> the tensor its bytes come from
    names: dict[bool, dict[str, str]] = {False: {}, True: {}}
    for use_cache, model in graphs.items():
        for tensor in model.graph.initializer:
            if _is_branch_constant(tensor):
                continue
            key = _content_key(folder, tensor)
            if key not in shared:
                name = tensor.name if tensor.name not in sources and tensor.name not in outer \
                    else BRANCH_PREFIX[use_cache] + tensor.name
                shared[key] = name
                sources[name] = tensor
            names[use_cache][tensor.name] = shared[key]
    branches = {}
    for use_cache, model in graphs.items():
        prefix, graph = BRANCH_PREFIX[use_cache], model.graph
        nodes = list(graph.node)
        for node in nodes:
            _rename(node, names[use_cache], prefix, outer)
        local = [t for t in graph.initializer if _is_branch_constant(t)]
        for tensor in local:
            tensor.name = prefix + tensor.name
        outputs = []
        for value in graphs[False].graph.output:  # the first step's outputs, in its order, in both branches
            produced = next((o for o in graph.output if o.name == value.name), None)
            out = _unknown_dims(value)
            out.name = prefix + value.name
            if produced is None:  # a cross-attention K/V of the with-past graph: an empty constant, as optimum's
                shape = [0 if not d.HasField("dim_value") else d.dim_value
                         for d in value.type.tensor_type.shape.dim]
                nodes.append(onnx.helper.make_node(
                    "Constant", [], [out.name], name=prefix + "empty/" + value.name,
                    value=onnx.helper.make_tensor("empty", value.type.tensor_type.elem_type, shape, [])))
            elif produced.name in outer:
                nodes.append(onnx.helper.make_node("Identity", [produced.name], [out.name],
                                                   name=prefix + "output/" + value.name))
            else:
                for node in nodes:  # the value the branch computed takes the output's (prefixed) name already
                    if out.name in node.output:
                        break
                else:
                    raise ValueError(f"{with_past if use_cache else first}: no node computes {value.name}")
            outputs.append(out)
        branches[use_cache] = (nodes, outputs, local)
    outputs = [_unknown_dims(v) for v in graphs[False].graph.output]
    lm_head = _hoist_lm_head(branches, set(sources))
    if_outputs = [LM_HEAD_INPUT if lm_head is not None and o.name == LOGITS else o.name for o in outputs]
    then_branch, else_branch = (onnx.helper.make_graph(branches[c][0], BRANCH_PREFIX[c].rstrip("/"), [],
                                                       branches[c][1], branches[c][2]) for c in (True, False))
    if_node = onnx.helper.make_node("If", [USE_CACHE], if_outputs, name="merged::if", then_branch=then_branch,
                                    else_branch=else_branch)
    inputs = [_unknown_dims(v) if v.name.startswith("encoder_") else v for v in top_inputs.values()]
    inputs.append(onnx.helper.make_tensor_value_info(USE_CACHE, onnx.TensorProto.BOOL, [1]))

    initializers, offset = copy_weights(folder, sources, folder / data_name(merged))
    nodes = [if_node] if lm_head is None else [if_node, lm_head]
    save_derived(base, onnx.helper.make_graph(nodes, "merged", inputs, outputs, initializers), folder, merged, first)
    return offset
