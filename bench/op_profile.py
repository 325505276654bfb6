"""onnxruntime's own profile of one decoder-with-past graph, by op type: where a step's kernel time goes, and how
many nodes it runs. The profiler adds its own cost per node, so the shares matter, not the absolute times.

    .venv/bin/python -m bench.op_profile GRAPH.onnx [--batch 1] [--past 16] [--encoder-length 64] [--runs 100]

A shared-cache graph (the one OnnxT5 steps on) runs as the runtime runs it (`bench.decoder_step.step_call`).
"""

from __future__ import annotations

import argparse
import collections
import json
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.decoder_step import ENCODER_LENGTH, step_call, step_feed
from distill.errors import cli_errors
from export.runtime.sessions import session_options


def profile(graph: Path, batch: int, past: int, runs: int, warmup: int = 20,
            encoder_length: int = ENCODER_LENGTH) -> dict:
    """Median run time, kernel time per run by op type and node counts per run, over `runs` profiled runs."""
    options = session_options(2)
    options.enable_profiling = True
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        call = step_call(session, step_feed(session, batch, past, encoder_length))
        for _ in range(warmup + runs):
            call()
        events = json.loads(Path(session.end_profiling()).read_text())
    kernel_us: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    run_us = [e["dur"] for e in events if e.get("cat") == "Session" and e["name"] == "model_run"][-runs:]
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            kernel_us[e["args"]["op_name"]] += e["dur"]
            nodes[e["args"]["op_name"]] += 1
    total = warmup + runs  # the node events cover every run
    return {"run_ms": float(np.median(run_us)) / 1000, "kernel_ms": sum(kernel_us.values()) / total / 1000,
            "nodes": sum(nodes.values()) / total,
            "ops": {op: {"ms": us / total / 1000, "nodes": nodes[op] / total} for op, us in kernel_us.most_common()}}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.op_profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--past", type=int, default=16, help="cached self-attention positions")
    parser.add_argument("--encoder-length", type=int, default=ENCODER_LENGTH,
                        help="encoder positions the cross-attention reads")
    parser.add_argument("--runs", type=int, default=100)
    args = parser.parse_args()
    with cli_errors(parser.prog):
        out = profile(args.graph, args.batch, args.past, args.runs, encoder_length=args.encoder_length)
    print(f"{args.graph}: run {out['run_ms']:.3f} ms (profiled), kernels {out['kernel_ms']:.3f} ms, "
          f"{out['nodes']:.0f} nodes per run")
    for op, row in out["ops"].items():
        share = 100 * row["ms"] / out["kernel_ms"]
        print(f"  {op:28s} {row['ms']:7.3f} ms  {share:5.1f} %  ({row['nodes']:.0f} nodes)")


if __name__ == "__main__":
    main()
