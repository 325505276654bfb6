"""The rate at which each weight format's one-row MatMul kernel reads its weights: one MatMul of a given shape (by
default mt5-small's output projection, 512 x 250,112) as the export writes it in fp32, int8, 8-bit blocks (the one-row
graph's, `export.one_row`) and 4-bit, each timed alone at batch 1 and alternated call by call, against the bandwidth
probe of `bench.floor` in the same run.

    python -m bench.kernel_rate [--rows 512] [--cols 250112] [--threads 2] [--calls 60] [--rounds 3]

`bench.floor` puts a step's time against its weight bytes at the probe's rate; a kernel that reads its weights more
slowly than the probe sets a floor of its own, which no change of the graph around it removes. The weights must be
larger than the CPU's last-level cache for the rate to be the memory's: a matrix that stays cached between calls
reads faster than the probe. The quantized graphs are made by the export's own passes (`export.dynamic_int8`,
`export.int4`, with `export.one_row`'s settings for the 8-bit blocks) from the fp32 one, and run with the runtime's
session options, so the kernels are the ones an exported step runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.floor import bandwidth_probe, step_weight_bytes

FORMATS = ("fp32", "int8", "8-bit blocks", "4-bit")


def write_graphs(folder: Path, rows: int, cols: int) -> dict[str, Path]:
    """The one-MatMul graph (1, 1, rows) x (rows, cols) in each format, under `folder`."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from export.dynamic_int8 import quantize_graph as quantize_int8
    from export.int4 import quantize_graph as quantize_nbits
    from export.one_row import BITS, BLOCK_SIZE, SYMMETRIC

    weight = (np.random.default_rng(0).standard_normal((rows, cols)) * 0.02).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="lm_head/MatMul")], "kernel",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, rows])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, cols])],
                              [numpy_helper.from_array(weight, "w")])
    paths = {name: folder / f"{name.replace(' ', '-')}.onnx" for name in FORMATS}
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(paths["fp32"]),
              save_as_external_data=True, location="fp32.onnx_data")
    quantize_int8(paths["fp32"], paths["int8"], ("MatMul",))
    quantize_nbits(paths["fp32"], paths["8-bit blocks"], BLOCK_SIZE, bits=BITS, symmetric=SYMMETRIC)
    quantize_nbits(paths["fp32"], paths["4-bit"])
    return paths


def measure(paths: dict[str, Path], threads: int, calls: int, rounds: int, gib: float = 1.0) -> dict[str, Any]:
    """Per format: weight bytes and, per round, the median seconds of `calls` alternated calls; the probe's bytes per
    second (on `gib` GiB), read once before each round."""
    import onnxruntime as ort

    from export.runtime.sessions import session_options

    # pools that sleep after each run: alternated, spinning pools would take each other's cores
    sessions = {name: ort.InferenceSession(str(p), session_options(threads, spin="never"),
                                           providers=["CPUExecutionProvider"]) for name, p in paths.items()}
    rows = sessions["fp32"].get_inputs()[0].shape[-1]
    feed = {"x": np.random.default_rng(1).standard_normal((1, 1, rows)).astype(np.float32)}
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    probe_rates = []
    with bandwidth_probe(threads, gib) as probe:
        for _ in range(rounds):
            probe_rates.append(probe(3))
            times: dict[str, list[float]] = {name: [] for name in paths}
            for session in sessions.values():
                session.run(None, feed)
            for k in range(calls):
                order = list(sessions.items())
                for name, session in order if k % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    session.run(None, feed)
                    times[name].append(time.perf_counter() - start)
            for name in paths:
                seconds[name].append(statistics.median(times[name]))
    return {"bytes": {name: step_weight_bytes(p) for name, p in paths.items()}, "seconds": seconds,
            "probe": probe_rates}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.kernel_rate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=512, help="the MatMul's input width (d_model)")
    parser.add_argument("--cols", type=int, default=250_112, help="its output width (the vocabulary)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=60, help="alternated calls of each format per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    if min(args.rows, args.cols, args.threads, args.calls, args.rounds) < 1:
        parser.error("--rows, --cols, --threads, --calls and --rounds must be 1 or more")
    if args.rows % 2:
        parser.error("--rows must be even: the 4-bit format packs two weights a byte along it")
    with tempfile.TemporaryDirectory() as tmp:
        out = measure(write_graphs(Path(tmp), args.rows, args.cols), args.threads, args.calls, args.rounds)
    probe = statistics.median(out["probe"])
    print(f"{args.rows} x {args.cols}, batch 1, {args.threads} threads; probe {probe / 1e9:.1f} GB/s "
          f"(median of {args.rounds} rounds)")
    print("| format | weights MB | ms (median of the rounds) | GB/s | vs the probe's rate |")
    print("|---|---|---|---|---|")
    for name in FORMATS:
        ms = statistics.median(out["seconds"][name]) * 1e3
        rate = out["bytes"][name] / (ms / 1e3)
        print(f"| {name} | {out['bytes'][name] / 1e6:.1f} | {ms:.3f} | {rate / 1e9:.1f} | {probe / rate:.2f}x |")


if __name__ == "__main__":
    main()
