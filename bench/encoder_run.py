"""One encoder graph's run on a padded batch: its median time, and how far its memory peaks above what loading left.

    .venv/bin/python -m bench.encoder_run runs/export/student/encoder_model_quantized.onnx --batch 8 --length 256

The batch is random token ids (below the vocabulary size of the folder's config.json); every other row is padded
from half its length, so that the mask the encoder applies is not all ones. One graph per process (VmHWM only
grows): compare exports by running this once for each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np


def resident_mib() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MiB."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def measure(graph: Path, batch: int, length: int, runs: int, threads: int) -> dict[str, float]:
    """Median ms of `runs` runs after one untimed run; resident MiB after loading and the peak over the runs."""
    import onnxruntime as ort

    from bench.errors import BenchError
    from export.runtime.sessions import session_options

    if not graph.is_file():
        raise BenchError(f"{graph}: no such graph; export a model first (python -m export)")
    if batch < 1 or length < 2 or runs < 1:
        raise BenchError("batch and runs must be at least 1, length at least 2")
    session = ort.InferenceSession(str(graph), session_options(threads), providers=["CPUExecutionProvider"])
    config = graph.parent / "config.json"  # the export folder's: token ids below its vocabulary size
    vocab = json.loads(config.read_text())["vocab_size"] if config.is_file() else 8000
    ids = np.random.default_rng(0).integers(2, min(vocab, 8000), size=(batch, length))
    mask = np.ones_like(ids)
    mask[1::2, length // 2:] = 0
    feed = {"input_ids": ids, "attention_mask": mask}
    loaded, _ = resident_mib()
    session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - start)
    return {"ms": 1000 * statistics.median(times), "loaded_mib": loaded, "peak_mib": resident_mib()[1]}


def main(argv: list[str] | None = None) -> None:
    from distill.errors import cli_errors

    parser = argparse.ArgumentParser(prog="python -m bench.encoder_run", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("graph", type=Path, help="an encoder graph (encoder_model.onnx or its int8 / 4-bit form)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        out = measure(args.graph, args.batch, args.length, args.runs, args.threads)
        print(f"{args.graph} batch {args.batch} x {args.length}: median {out['ms']:.2f} ms over {args.runs} runs; "
              f"{out['loaded_mib']:.0f} MiB after loading, peak {out['peak_mib']:.0f} MiB "
              f"(+{out['peak_mib'] - out['loaded_mib']:.0f})")


if __name__ == "__main__":
    main()
