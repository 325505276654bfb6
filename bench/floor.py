"""How close one decoder step comes to the memory-bandwidth floor: the time a step must take at least, because it reads
every weight of the decoder once, against the time OnnxT5 takes per generated token.

    python -m bench.floor --onnx runs/export/student --threads 2 --json floor.json

At batch 1 a decoder step is a chain of matrix-vector products: each weight is read once and used for one multiply-
add, so the step cannot be faster than (bytes of the weights it reads) / (memory bandwidth). The bytes are counted
from the decoder-with-past graph itself (fp32, int8 or 4-bit alike): every initializer except the tables that are
only gathered from (the token embedding, of which a step reads one row, and the relative-position bias). The cross-
attention keys and values are inputs of that graph (computed once per input by the first step), so their projections
are not counted. The bandwidth is measured in the same run on a 1 GiB fp32 array, by the faster of numpy threads
summing it and onnxruntime's MatMul of a vector by it (`bandwidth_probe`). The per-token time is measured on the whole
`generate` at batch 1, greedy: (time for 1 + N new tokens - time for 1) / N, so the encoder and the first step drop
out and the Python of the loop and the argmax stay in. Bandwidth and per-token times alternate round by round, and
each round's ratio uses its own bandwidth (`measure`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from export.layout import DECODER_WITH_PAST, quantized_name

GATHER_ONLY = ("Gather", "GatherElements")  # ops that read a few rows of a table, not the whole of it
TRIES = 2  # per round: the best of this many bandwidth reads by each reader, and of this many calls of each generate


@contextmanager
def bandwidth_probe(threads: int, gib: float = 1.0) -> Iterator[Callable[[int], float]]:
    """For the duration: a probe whose call (`repeats`) gives the bytes per second of the faster of two readers of a
    `gib` fp32 array, best of `repeats` each: `threads` numpy threads summing their share, and onnxruntime's own MatMul
    of a vector by the array as a matrix (the kernel a decoder step at batch 1 runs). The floor must be a bound no
    kernel beats, so it takes the faster reader: numpy's sum alone reads markedly slower than onnxruntime's
    matrix-vector product on some CPUs."""
    import onnxruntime
    from onnx import TensorProto, helper

    side = int((gib * 2**30 / 4) ** 0.5)
    data = np.ones((side, side), dtype=np.float32)
    parts = np.array_split(data.reshape(-1), threads)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side]),
                               helper.make_tensor_value_info("w", TensorProto.FLOAT, [side, side])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
                                           .SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"x": np.ones((1, side), dtype=np.float32), "w": data}
    with ThreadPoolExecutor(threads) as pool:  # numpy releases the GIL in reductions

        def probe(repeats: int) -> float:
            best = float("inf")
            for read in (lambda: list(pool.map(np.sum, parts)), lambda: session.run(None, feed)):
                for _ in range(repeats):
                    start = time.perf_counter()
                    read()
                    best = min(best, time.perf_counter() - start)
            return data.nbytes / best

        yield probe


def bandwidth(threads: int, gib: float = 1.0, repeats: int = 5) -> float:
    """Bytes per second by `bandwidth_probe`, best of `repeats` reads by each reader."""
    with bandwidth_probe(threads, gib) as probe:
        return probe(repeats)


def step_weight_bytes(graph: Path) -> int:
    """Bytes of the initializers one call of a decoder-with-past graph reads whole: all of them, except those that
    only Gather-like nodes consume (embedding rows, relative-position buckets), subgraphs included."""
    import onnx
    from onnx import helper

    model = onnx.load(str(graph), load_external_data=False)
    consumers: dict[str, set[str]] = {}

    def walk(g: onnx.GraphProto) -> None:
        for node in g.node:
            for name in node.input:
                consumers.setdefault(name, set()).add(node.op_type)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    walk(sub)

    walk(model.graph)
    total = 0
    for init in model.graph.initializer:
        ops = consumers.get(init.name, set())
        if ops and ops <= set(GATHER_ONLY):
            continue
        size = helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
        total += int(np.prod(init.dims, dtype=np.int64)) * size
    return total


def median_seconds(call: Callable[[], Any], repeats: int) -> float:
    call()  # warm-up: the first call allocates what the others reuse
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def best_seconds(call: Callable[[], Any], tries: int) -> float:
    """The fastest of `tries` calls: within a round, as the bandwidth probe's best read is."""
    best = float("inf")
    for _ in range(tries):
        start = time.perf_counter()
        call()
        best = min(best, time.perf_counter() - start)
    return best


def measure(folder: Path, threads: int, input_length: int = 64, new_tokens: int = 32, repeats: int = 7,
            bandwidth_gib: float = 1.0, int8_tensor: bool = False, copies: bool = False) -> dict[str, Any]:
    """The floor and the measured per-token time of an export's fp32 graphs, and of its int8 and 4-bit graphs when
    it has them, in `repeats` rounds. A step's bytes are those of the graph OnnxT5 steps on: for int8, the one-row
    graph where the runtime uses it (`export.one_row`); `int8_tensor` adds "int8-tensor", the int8 graphs with every
    step on the int8 with-past graph (one scale per tensor), as the runtime steps them without the one-row graph;
    `copies` adds "fp32-copies" and "int8-copies", the same graphs without the shared-cache ones (`shared_cache=False`:
    MultiHeadAttention copies the past into a new present at every step).

    Each round reads the bandwidth (on an array of `bandwidth_gib`, far larger than any cache), then times each
    precision's generate for 1 and for 1 + `new_tokens` new tokens, at batch 1, greedy, each the best of `TRIES`
    calls, as the bandwidth is the best of as many reads: its per-token time is the difference over `new_tokens`,
    its ratio to the floor the one this round's bandwidth gives. A shared machine's
    bandwidth and speed drift together from one minute to the next (the same step read 2x apart), so the ratio is
    taken round by round, where both were measured side by side, and the median of the rounds' ratios reported.
    """
    from export import OnnxT5

    config = json.loads((folder / "config.json").read_text())
    rng = np.random.default_rng(0)
    ids = np.concatenate([rng.integers(3, min(config["vocab_size"], 8000), size=(1, input_length - 1)),
                          np.full((1, 1), config["eos_token_id"])], axis=1).astype(np.int64)
    mask = np.ones_like(ids)
    runs: dict[str, tuple[int, Callable[[], Any], Callable[[], Any]]] = {}
    int8 = quantized_name(DECODER_WITH_PAST, "int8")
    # name, quantized, the with-past graph, one_row_graph, shared_cache
    precisions = [("fp32", False, DECODER_WITH_PAST, True, True), ("int8", "int8", int8, True, True),
                  ("int4", "int4", quantized_name(DECODER_WITH_PAST, "int4"), True, True)]
    if int8_tensor:
        precisions.insert(2, ("int8-tensor", "int8", int8, False, True))
    if copies:
        precisions[1:1] = [("fp32-copies", False, DECODER_WITH_PAST, True, False)]
        precisions.insert(3, ("int8-copies", "int8", int8, True, False))
    for precision, quantized, graph, one_row, shared in precisions:
        if not (folder / graph).is_file():
            continue
        runtime = OnnxT5.from_pretrained(folder, quantized=quantized, threads=threads, one_row_graph=one_row,
                                         shared_cache=shared)
        one, many = (lambda r=runtime, n=n: r.generate(ids, mask, num_beams=1, do_sample=False, min_new_tokens=n,
                                                        max_new_tokens=n) for n in (1, 1 + new_tokens))
        one(), many()  # warm-up: the first calls allocate what the others reuse
        stepped = runtime.one_row_graph or folder / graph
        runs[precision] = (step_weight_bytes(stepped), one, many)
    rounds = []
    with bandwidth_probe(threads, bandwidth_gib) as probe:
        order = list(runs)
        for _ in range(repeats):
            bw = probe(TRIES)
            row: dict[str, Any] = {"bandwidth_gb_s": bw / 1e9, "per_token_ms": {}, "vs_floor": {}}
            for precision in order:
                weights, one, many = runs[precision]
                ms = 1000 * (best_seconds(many, TRIES) - best_seconds(one, TRIES)) / new_tokens
                row["per_token_ms"][precision] = ms
                row["vs_floor"][precision] = ms / (1000 * weights / bw)
            rounds.append(row)
            order.reverse()
    bw = statistics.median(r["bandwidth_gb_s"] for r in rounds) * 1e9
    out: dict[str, Any] = {"bandwidth_gb_s": bw / 1e9, "threads": threads, "input_length": input_length,
                           "new_tokens": new_tokens, "precisions": {}, "rounds": rounds}
    for precision, (weights, _, _) in runs.items():
        ms = statistics.median(r["per_token_ms"][precision] for r in rounds)
        ratio = statistics.median(r["vs_floor"][precision] for r in rounds)
        floor = 1000 * weights / bw
        out["precisions"][precision] = {"step_weight_mb": weights / 1e6, "floor_ms": floor, "per_token_ms": ms,
                                        "vs_floor": ratio}
        print(f"{folder.name} {precision}: a step reads {weights / 1e6:.1f} MB -> floor {floor:.2f} ms at "
              f"{bw / 1e9:.1f} GB/s (median of {repeats} rounds); measured {ms:.2f} ms per token; "
              f"{ratio:.2f}x the floor (median of the rounds' ratios)", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    import os

    from bench.errors import BenchError
    from distill.errors import cli_errors

    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, required=True, help="an export folder (python -m export)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write the measurements here")
    parser.add_argument("--int8-tensor", action="store_true",
                        help="also the int8 graphs without the one-row graph: every step on the int8 with-past graph")
    parser.add_argument("--copies", action="store_true",
                        help="also fp32 and int8 without the shared-cache graphs (the past copied at every step)")
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        if not (args.onnx / DECODER_WITH_PAST).is_file():
            raise BenchError(f"{args.onnx} holds no {DECODER_WITH_PAST}; make one with "
                                    f"`python -m export --model MODEL --out {args.onnx} --int8`.")
        result = measure(args.onnx, args.threads, new_tokens=args.new_tokens, repeats=args.repeats,
                         int8_tensor=args.int8_tensor, copies=args.copies)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
