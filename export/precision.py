"""fp16 and bf16 graphs beside the fp32 ones, converted from the validated fp32 graphs with T5's overflow kept out.

T5 overflows in fp16: the feed-forward output projection `wo` and the residual stream it adds into pass 65,504 on
real checkpoints (transformers issues 9295 and 5651), which is why transformers keeps `wo` in fp32
(`T5ForConditionalGeneration._keep_in_fp32_modules = ["wo"]`) and computes the layer norm's variance in fp32. The
conversion (onnxruntime's `convert_float_to_float16`) therefore keeps in fp32, by node: every `wo` MatMul, the
residual additions after each attention and feed-forward sub-layer, the RMS layer norms (their `Pow`/`ReduceMean`
reduction), the attention softmax (transformers runs it on `scores.float()`) and the float arithmetic that turns
relative positions into bucket indices (a `log` whose fp16 rounding moves positions across bucket boundaries: on a
tiny model it changed the encoder output by 10 %). The rest (q/k/v/o, wi, lm_head,
the K/V cache and the encoder output) is fp16; `input_ids`, masks and `logits` stay as in the fp32 graph, so the
search code sees the same logits dtype. bf16 has fp32's range: the same graph, every fp16 tensor made bf16, with the
weights rounded from their fp32 values (not from fp16, which would clamp them).
"""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from export.errors import ExportError
from export.layout import DTYPES, data_name, dtype_name

FP32_MODULES = ("wo", "layer_norm", "final_layer_norm")  # module names (TorchScript node paths) kept in fp32
# op types kept in fp32 wherever they are: the softmax, and the fused attention that holds one (its fp16 kernel
# exists on CUDA, its bf16 one not in every onnxruntime; T5 attends in fp32 in transformers too)
FP32_OPS = ("Softmax", "MultiHeadAttention")
# float arithmetic that ends in a Cast to an integer (the relative-position buckets) is walked back through these ops
INDEX_MATH_OPS = ("Div", "Log", "Mul", "Add", "Sub", "Min", "Max", "Neg", "Abs", "Where", "Cast", "Constant")
KEEP_IO = ("input_ids", "attention_mask", "encoder_attention_mask", "logits")  # graph inputs/outputs left as they are


def _index_math(graph: Any) -> set[str]:
    """Nodes of the float arithmetic that computes integer indices: walked back from each Cast to an integer type
    through INDEX_MATH_OPS, up to the Cast that made the floats."""
    from onnx import TensorProto

    producer = {out: node for node in graph.node for out in node.output}

    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    found: set[str] = set()
    todo = [n for n in graph.node if cast_to(n) in (TensorProto.INT64, TensorProto.INT32)]
    while todo:
        node = todo.pop()
        if node.name in found:
            continue
        found.add(node.name)
        if cast_to(node) == TensorProto.FLOAT:
            continue  # the floats start here
        todo += [producer[i] for i in node.input if i in producer and producer[i].op_type in INDEX_MATH_OPS]
    return found


def fp32_nodes(graph: Any) -> list[str]:
    """Names of the nodes kept in fp32: `wo` and the layer norms (by module path), the residual additions (an Add that
    belongs directly to a `layer.N` sub-layer: `/model/decoder/block.0/layer.2/Add`), every Softmax and the float
    arithmetic of integer indices (`_index_math`)."""
    index_math = _index_math(graph)
    kept = []
    for node in graph.node:
        parts = node.name.split("/")
        residual = node.op_type == "Add" and len(parts) >= 2 and parts[-2].startswith("layer.")
        if (residual or node.op_type in FP32_OPS or node.name in index_math
                or any(part in FP32_MODULES for part in parts)):
            kept.append(node.name)
    return kept


def _fp32_between_kept(model: Any, kept: set[str]) -> None:
    """Let fp32 nodes pass fp32 tensors to each other, in place.

    `convert_float_to_float16` computes a blocked node in fp32 but stores its output in fp16 (a Cast after it, and a
    Cast back before the next blocked node): the residual stream would still be rounded, and overflow, at 65,504
    between the residual Add and the next layer norm. Each Cast-to-fp16 of a kept node's output whose result is cast
    straight back to fp32 is skipped: those consumers read the kept node's fp32 output.
    """
    from onnx import TensorProto

    graph = model.graph
    made_by_kept = {out for node in graph.node if node.name in kept for out in node.output}

    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    to_fp16 = {node.output[0]: node.input[0] for node in graph.node
               if cast_to(node) == TensorProto.FLOAT16 and node.input[0] in made_by_kept}
    back = {node.output[0]: to_fp16[node.input[0]] for node in graph.node
            if cast_to(node) == TensorProto.FLOAT and node.input[0] in to_fp16}
    dropped = {node.name for node in graph.node if node.output[0] in back}
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = back.get(name, name)
    used = {name for node in graph.node if node.name not in dropped for name in node.input}
    used |= {out.name for out in graph.output}
    dropped |= {node.name for node in graph.node if node.output[0] in to_fp16 and node.output[0] not in used}
    remaining = [node for node in graph.node if node.name not in dropped]
    # the converter appends its Casts at the end; ONNX wants producers before consumers (onnxruntime sorts anyway)
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    waiting = [{i for i in node.input if i not in ready} for node in remaining]  # Kahn's topological sort
    consumers: dict[str, list[int]] = {}
    for index, names in enumerate(waiting):
        for name in names:
            consumers.setdefault(name, []).append(index)
    queue = deque(index for index, names in enumerate(waiting) if not names)
    ordered: list[Any] = []
    while queue:
        node = remaining[queue.popleft()]
        ordered.append(node)
        for out in node.output:
            for index in consumers.pop(out, []):
                waiting[index].discard(out)
                if not waiting[index]:
                    queue.append(index)
    if len(ordered) != len(remaining):
        raise ExportError("the fp16 conversion left nodes whose inputs nothing makes; report it with the model.")
    del graph.node[:]
    graph.node.extend(ordered)


def _bf16_bits(values: np.ndarray) -> np.ndarray:
    """fp32 values rounded to the nearest bf16 (ties to even), as the uint16 bit patterns ONNX stores."""
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(values), np.uint16(0x7FC0), rounded)


def _to_bf16(model: Any, fp32_initializers: dict[str, np.ndarray]) -> None:
    """Turn every fp16 tensor type, Cast and initializer of the converted `model` into bf16, in place."""
    from onnx import TensorProto, numpy_helper

    def retype(value_infos: Any) -> None:
        for info in value_infos:
            tensor_type = info.type.tensor_type
            if tensor_type.elem_type == TensorProto.FLOAT16:
                tensor_type.elem_type = TensorProto.BFLOAT16

    def bf16_tensor(tensor: Any, fp32: np.ndarray | None) -> None:
        values = fp32 if fp32 is not None else numpy_helper.to_array(tensor).astype(np.float32)
        bits = _bf16_bits(values)
        name, dims = tensor.name, list(tensor.dims)
        tensor.Clear()
        tensor.name, tensor.data_type = name, TensorProto.BFLOAT16
        tensor.dims.extend(dims)
        tensor.raw_data = bits.tobytes()

    graph = model.graph
    retype(graph.input)
    retype(graph.output)
    retype(graph.value_info)
    for tensor in graph.initializer:
        if tensor.data_type == TensorProto.FLOAT16:
            bf16_tensor(tensor, fp32_initializers.get(tensor.name))
    for node in graph.node:
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == TensorProto.FLOAT16:
                attr.i = TensorProto.BFLOAT16
            elif attr.t.data_type == TensorProto.FLOAT16:  # Constant nodes' values
                bf16_tensor(attr.t, None)


def convert(source: Path, target: Path, dtype: str) -> dict[str, Any]:
    """Write `target`: the fp32 graph `source` in `dtype` ("fp16" or "bf16") with the overflow-prone nodes in fp32.

    Returns what export_meta.json records about it: the nodes kept in fp32, by op type.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    if dtype not in DTYPES or dtype == "fp32":
        raise ExportError(f"--dtype {dtype!r}: choose one of {', '.join(d for d in DTYPES if d != 'fp32')}.")
    model = onnx.load(str(source))
    kept = fp32_nodes(model.graph)
    keep_io = [v.name for v in (*model.graph.input, *model.graph.output) if v.name in KEEP_IO]
    fp32 = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer} if dtype == "bf16" else {}
    converted = convert_float_to_float16(model, keep_io_types=keep_io, node_block_list=kept,
                                         op_block_list=[*DEFAULT_OP_BLOCK_LIST, *FP32_OPS])
    _fp32_between_kept(converted, set(kept) | {n.name for n in converted.graph.node if n.op_type in FP32_OPS})
    if dtype == "bf16":
        _to_bf16(converted, fp32)
    data = target.with_name(data_name(target.name))  # every graph's weights in a file of its own, as the fp32 ones
    data.unlink(missing_ok=True)  # save_model appends to an existing data file
    onnx.save_model(converted, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    os.chmod(data, os.stat(target).st_mode & 0o777)  # onnx writes it readable by its owner alone
    by_op: dict[str, int] = {}
    types = {node.name: node.op_type for node in model.graph.node}
    for name in kept:
        by_op[types[name]] = by_op.get(types[name], 0) + 1
    return {"fp32_nodes": dict(sorted(by_op.items()))}


def convert_folder(folder: Path, dtype: str, graphs: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """`convert` each of `graphs` (fp32 file names in `folder`) to `dtype_name(graph, dtype)` beside it."""
    return {graph: convert(folder / graph, folder / dtype_name(graph, dtype), dtype) for graph in graphs}


# Each dtype graph's logits are compared with the fp32 graphs' (already matched to PyTorch) on the validation batch,
# teacher-forced along the fp32 greedy tokens. A correct conversion differs by its rounding, which grows with depth:
# about 1e-2 relative per fp16 layer stack on random weights; bf16 keeps 8 bits of mantissa to fp16's 11. A wrong
# graph (a dropped scale, a stale cache, an overflow to inf) moves logits by a large part of their range.
TOLERANCES = {"fp16": (1e-2, 5e-2), "bf16": (5e-2, 0.25)}  # (atol, rtol of max |fp32 logits|)
CHECK_NEW_TOKENS = 16  # greedy tokens compared with the fp32 graphs' on the validation batch


def check_providers_for(dtype: str) -> list[str]:
    """Where the `dtype` graphs can be checked: CUDA when this onnxruntime has it, else the CPU provider, which runs
    fp16 graphs (casting to fp32 around the ops it has no fp16 kernel for) but has no bf16 MatMul at all."""
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    if dtype == "bf16":
        raise ExportError("--dtype bf16: onnxruntime's CPU provider has no bfloat16 MatMul, so the bf16 graphs cannot "
                          "be checked here; export on a machine with onnxruntime-gpu and CUDA, or use --dtype fp16.")
    return ["CPUExecutionProvider"]


def dtype_agreement(folder: Path, dtype: str, check: Any, model_config: Any) -> dict[str, Any]:
    """Check the `dtype` graphs against the fp32 graphs in `folder`; what export_meta.json records.

    Raises ExportError when a logit is not finite or differs by more than TOLERANCES allow.
    """
    from export.runtime import OnnxT5
    from export.trace import example_batch

    providers = check_providers_for(dtype)
    ex = example_batch(model_config, check.enc_lengths, 1, check.seed)
    ids, mask = ex["input_ids"], ex["attention_mask"]
    kwargs = {"max_new_tokens": CHECK_NEW_TOKENS, "min_new_tokens": CHECK_NEW_TOKENS, "num_beams": 1,
              "do_sample": False}
    fp32 = OnnxT5.from_staged(folder)  # export_meta.json comes later
    low = OnnxT5.from_staged(folder, providers=providers, dtype=dtype, io_binding=False)
    want, got = fp32.generate(ids, mask, **kwargs), low.generate(ids, mask, **kwargs)
    # teacher-forced: both read fp32's tokens, so a difference is the graphs', not a diverged prefix
    logits32, own32, cross32 = fp32.first_step(want[:, :1], mask, fp32.encode(ids, mask))
    logits, own, cross = low.first_step(want[:, :1], mask, low.encode(ids, mask))
    diff, scale, finite = 0.0, 0.0, True
    for t in range(1, want.shape[1]):
        finite = finite and bool(np.all(np.isfinite(logits)))
        diff = max(diff, float(np.max(np.abs(logits - logits32))))
        scale = max(scale, float(np.max(np.abs(logits32))))
        if t < want.shape[1] - 1:
            logits32, own32 = fp32.step(want[:, t:t + 1], mask, own32, cross32)
            logits, own = low.step(want[:, t:t + 1], mask, own, cross)
    atol, rtol = TOLERANCES[dtype]
    tol = atol + rtol * scale
    if not finite or not diff <= tol:
        what = "non-finite logits" if not finite else f"logits {diff:.3g} away from fp32's (max |diff|)"
        raise ExportError(f"--dtype {dtype}: the {dtype} graphs give {what} on the validation batch, above the "
                          f"tolerance {tol:.3g} (atol {atol:g} + rtol {rtol:g} x max |fp32 logit| {scale:.3g}), so "
                          "nothing was written. Report it with the model's config, or export fp32 (no --dtype).")
    return {"logits_max_abs_diff": diff, "tolerance": tol, "atol": atol, "rtol": rtol,
            "greedy_token_agreement": float(np.mean(want[:, 1:] == got[:, 1:])),
            "greedy_sequence_agreement": float(np.mean(np.all(want[:, 1:] == got[:, 1:], axis=1))),
            "new_tokens": CHECK_NEW_TOKENS, "batch": len(check.enc_lengths), "checked_on": providers[0]}
