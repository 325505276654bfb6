"""How much of one decoder step its weight MatMuls take: the step's graph cut down to those MatMuls alone (the same
weights, fp32, int8 or 4-bit, fed random activations of their input widths), timed call by call in alternation with
the whole step. What is left over is everything else the step runs: attention, norms, the per-node overhead.

    python -m bench.matmul_share GRAPH.onnx [--batch 1] [--past 16] [--calls 200] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import cli_errors

WEIGHT_MATMULS = ("MatMul", "MatMulInteger", "MatMulNBits")  # with a weight initializer as their second input


def matmul_graph(graph: Path) -> tuple[Any, int]:
    """The weight MatMuls of the graph at `graph` (its weights loaded) as a graph of their own, each reading a graph
    input of its input width (int8 ones through one DynamicQuantizeLinear per width), every product an output; and the
    bytes of the weights they read."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(graph))
    initializers = {t.name: t for t in model.graph.initializer}
    nodes, outputs, used, widths = [], [], set(), set()
    for node in model.graph.node:
        if node.op_type not in WEIGHT_MATMULS or len(node.input) < 2 or node.input[1] not in initializers:
            continue
        if node.op_type == "MatMulNBits":
            width = next(a.i for a in node.attribute if a.name == "K")
        else:
            width = int(initializers[node.input[1]].dims[0])
        widths.add(width)
        inputs = list(node.input)
        if node.op_type == "MatMulInteger":  # a, b, a_zero_point, b_zero_point
            inputs[0], inputs[2] = f"q{width}", f"qz{width}"
        else:
            inputs[0] = f"x{width}"
        nodes.append(helper.make_node(node.op_type, inputs, [node.output[0]], domain=node.domain,
                                      **{a.name: helper.get_attribute_value(a) for a in node.attribute}))
        out_type = TensorProto.INT32 if node.op_type == "MatMulInteger" else TensorProto.FLOAT
        outputs.append(helper.make_tensor_value_info(node.output[0], out_type, None))
        used.update(i for i in inputs if i in initializers)
    if not nodes:
        raise ValueError(f"{graph} has no MatMul with a weight initializer")
    quantize = [helper.make_node("DynamicQuantizeLinear", [f"x{w}"], [f"q{w}", f"s{w}", f"qz{w}"])
                for w in sorted(widths) if any(n.op_type == "MatMulInteger" and n.input[0] == f"q{w}" for n in nodes)]
    inputs = [helper.make_tensor_value_info(f"x{w}", TensorProto.FLOAT, ["batch", 1, w]) for w in sorted(widths)]
    cut = helper.make_graph(quantize + nodes, "matmuls", inputs, outputs, [initializers[n] for n in sorted(used)])
    weight_bytes = sum(numpy_helper.to_array(initializers[n]).nbytes for n in used)
    return helper.make_model(cut, opset_imports=list(model.opset_import), ir_version=model.ir_version), weight_bytes


def measure(graph: Path, batch: int, past: int, calls: int, threads: int) -> dict[str, Any]:
    """Median ms of the whole step and of its MatMuls alone, alternated call by call, and the weights' bytes."""
    import onnxruntime as ort

    from bench.decoder_step import step_call, step_feed
    from bench.interleaved import alternate
    from export.runtime.sessions import session_options

    # pools that sleep when a run ends: alternated, a pool spinning on would take the other session's core
    step = ort.InferenceSession(str(graph), session_options(threads, spin="in_run"),
                                providers=["CPUExecutionProvider"])
    cut, weight_bytes = matmul_graph(graph)
    matmuls = ort.InferenceSession(cut.SerializeToString(), session_options(threads, spin="in_run"),
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    step_inputs = step_feed(step, batch, past)
    cut_inputs = {i.name: rng.standard_normal((batch, 1, i.shape[2])).astype(np.float32)
                  for i in matmuls.get_inputs()}
    runs = [step_call(step, step_inputs), lambda: matmuls.run(None, cut_inputs)]
    for run in runs:
        run()
    seconds = alternate(runs, calls)
    step_ms, matmul_ms = (1000 * statistics.median(s) for s in seconds)
    return {"step_ms": step_ms, "matmuls_ms": matmul_ms, "share": matmul_ms / step_ms,
            "matmul_nodes": sum(n.op_type in WEIGHT_MATMULS for n in cut.graph.node),
            "weight_mb": weight_bytes / 1e6, "matmul_gb_s": weight_bytes / (matmul_ms / 1000) / 1e9}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.matmul_share", description=__doc__.split("\n\n")[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--past", type=int, default=16, help="cached self-attention positions")
    parser.add_argument("--calls", type=int, default=200, help="timed calls of each")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        out = measure(args.graph, args.batch, args.past, args.calls, args.threads)
    print(f"{args.graph}: step {out['step_ms']:.3f} ms, its {out['matmul_nodes']} weight MatMuls alone "
          f"{out['matmuls_ms']:.3f} ms ({100 * out['share']:.0f} %), reading {out['weight_mb']:.1f} MB at "
          f"{out['matmul_gb_s']:.1f} GB/s (medians of {args.calls} alternated calls)")


if __name__ == "__main__":
    main()
