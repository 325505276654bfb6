"""Two or more candidates timed call by call in alternation, in one process: whatever the machine does meanwhile (a
neighbour's memory traffic, a frequency change) falls on all of them alike. On a shared 2-core machine one process's
median moved 2x from one minute to the next; alternated calls still rank candidates that differ by 10 %.

    python -m bench.interleaved step A.onnx B.onnx [--batch 1] [--past 16] [--calls 300]
        decoder-with-past graphs, one call each in turn (`bench.decoder_step`'s inputs)
    python -m bench.interleaved generate FOLDER_A FOLDER_B [--quantized int8] [--batch 1] [--input 16] [--beams 1]
                                        [--new-tokens 32]
        OnnxT5 exports, one whole generate each in turn (random ids, EOS last, the new tokens forced);
        --search-graph both: each folder with and without its one-row greedy search graph
        --shared-cache both: each folder with and without its shared-cache graphs (the searches' cache appended in
        place); --subnormals both: each folder with beam search's log-softmax flushing subnormals to zero and
        keeping them (`export/runtime/log_softmax.py`); --block N: N timed calls of a candidate in a row, after one
        untimed call

Each round reverses the order of the one before. Prints each candidate's median, 25th percentile and minimum, its
median against the first candidate's, and whether its outputs equal the first's.

The `step` graphs' sessions stop their threads' spinning when a run ends (`session_options`' "in_run"): an
onnxruntime pool left spinning keeps a core busy for some 50-80 ms after its run, which the next candidate's call
would pay for (a t5-base step took 14.4 ms right after another session's runs, 5.9 ms ten calls later). OnnxT5's
sessions in `generate` keep their own options, and its per-step sessions spin on after their runs: there, run the
candidates in turn in blocks (`--block`, or `bench.paired` for two engines in two processes), whose untimed first
call takes the other candidate's spinning.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import cli_errors

NEW_TOKENS = 32


def alternate(calls: list[Callable[[], Any]], rounds: int, block: int = 1) -> list[list[float]]:
    """Seconds of each call of each candidate: `rounds` rounds, each in the reverse order of the one before; with
    `block` > 1, each turn is one untimed call and `block` timed ones."""
    seconds: list[list[float]] = [[] for _ in calls]
    order = list(range(len(calls)))
    for _ in range(rounds):
        for k in order:
            if block > 1:
                calls[k]()
            for _ in range(block):
                start = time.perf_counter()
                calls[k]()
                seconds[k].append(time.perf_counter() - start)
        order.reverse()
    return seconds


def summary(names: list[str], seconds: list[list[float]], same: list[bool]) -> list[dict[str, Any]]:
    """Per candidate: median, 25th percentile and minimum in ms, the median against the first's, and whether its
    outputs are the first's."""
    rows = []
    for name, times, equal in zip(names, seconds, same, strict=True):
        ms = np.asarray(times) * 1000
        rows.append({"name": name, "median_ms": float(np.median(ms)), "p25_ms": float(np.percentile(ms, 25)),
                     "min_ms": float(ms.min()), "same_outputs": equal})
    for row in rows:
        row["vs_first"] = row["median_ms"] / rows[0]["median_ms"]
    return rows


Candidates = tuple[list[Callable[[], Any]], list[bool]]  # one call each, and whether its outputs are the first's


def step_candidates(graphs: list[Path], batch: int, past: int, threads: int) -> Candidates:
    """One decoder-with-past call per graph on the same inputs; whether each graph's outputs equal the first's."""
    import onnxruntime as ort

    from bench.decoder_step import step_call, step_feed
    from bench.errors import BenchError
    from export.runtime.sessions import session_options

    sessions = [ort.InferenceSession(str(g), session_options(threads, spin="in_run"),
                                     providers=["CPUExecutionProvider"]) for g in graphs]
    inputs = [{i.name for i in s.get_inputs()} for s in sessions]
    for graph, names in zip(graphs[1:], inputs[1:], strict=True):
        if names != inputs[0]:
            raise BenchError(f"{graph} takes other inputs than {graphs[0]} (a shared-cache graph against a with-past "
                             "one?): alternate graphs of one kind, which take the same inputs")
    feed = step_feed(sessions[0], batch, past)
    outputs = [s.run(None, feed) for s in sessions]
    same = [all(np.array_equal(a, b) for a, b in zip(outputs[0], out, strict=True)) for out in outputs]
    return [step_call(s, feed) for s in sessions], same


def generate_candidates(folders: list[Path], quantized: str | bool, batch: int, length: int, beams: int,
                        threads: int, search: list[bool], shared: tuple[bool, ...] = (True,),
                        new_tokens: int = NEW_TOKENS, flushed: tuple[bool, ...] = (True,)) -> Candidates:
    """One whole generate per export, `search` setting (`search_graph=`), `shared` setting (`shared_cache=`) and
    `flushed` setting (beam search's log-softmax flushing subnormals) on the same ids; whether each one's tokens equal
    the first's."""
    from export import OnnxT5
    from export.runtime.log_softmax import LogSoftmax

    models = []
    for f, on, kept, flush in itertools.product(folders, search, shared, flushed):
        model = OnnxT5.from_pretrained(f, quantized=quantized, threads=threads, search_graph=on, shared_cache=kept)
        model._log_softmax = LogSoftmax(flush_subnormals=flush)  # else made by the first beam call, flushing
        models.append(model)
    ids = np.random.default_rng(0).integers(2, models[0].vocab_size, (batch, length))
    ids[:, -1] = models[0].settings.eos_token_id
    kwargs = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "num_beams": beams}
    tokens = [m.generate(ids, **kwargs) for m in models]
    same = [np.array_equal(tokens[0], t) for t in tokens]
    return [lambda m=m: m.generate(ids, **kwargs) for m in models], same


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.interleaved", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    step = sub.add_parser("step", help="decoder-with-past graphs")
    step.add_argument("graphs", type=Path, nargs="+")
    step.add_argument("--past", type=int, default=16, help="cached self-attention positions")
    gen = sub.add_parser("generate", help="OnnxT5 export folders")
    gen.add_argument("folders", type=Path, nargs="+")
    gen.add_argument("--quantized", default="int8", help="int8, int4 or none (the fp32 graphs)")
    gen.add_argument("--input", type=int, default=16, help="input tokens per row")
    gen.add_argument("--beams", type=int, default=1)
    gen.add_argument("--search-graph", choices=("on", "off", "both"), default="on",
                     help="OnnxT5's one-row greedy search graph; both: each folder loaded with it and without")
    gen.add_argument("--shared-cache", choices=("on", "off", "both"), default="on",
                     help="OnnxT5's shared-cache graphs; both: each folder with them and without")
    gen.add_argument("--subnormals", choices=("flushed", "kept", "both"), default="flushed",
                     help="in beam search's log-softmax; both: each folder flushing them to zero and keeping them")
    gen.add_argument("--new-tokens", type=int, default=NEW_TOKENS, help="new tokens per row, forced")
    for p in (step, gen):
        p.add_argument("--batch", type=int, default=1)
        p.add_argument("--calls", type=int, default=300, help="timed calls of each candidate")
        p.add_argument("--block", type=int, default=1, help="timed calls of a candidate in a row (after an untimed "
                       "one when above 1)")
        p.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        run(args)


def run(args: argparse.Namespace) -> None:
    """The candidates `args` names, alternated, and their summary printed."""
    if args.what == "step":
        names = [str(g) for g in args.graphs]
        calls, same = step_candidates(args.graphs, args.batch, args.past, args.threads)
    else:
        search = {"on": [True], "off": [False], "both": [False, True]}[args.search_graph]
        shared = {"on": (True,), "off": (False,), "both": (False, True)}[args.shared_cache]
        flushed = {"flushed": (True,), "kept": (False,), "both": (True, False)}[args.subnormals]
        names = [f"{f}{' (search graph)' if on else ''}{' (shared cache)' if kept else ''}"
                 f"{'' if flush else ' (subnormals kept)'}"
                 for f in args.folders for on in search for kept in shared for flush in flushed]
        quantized = False if args.quantized == "none" else args.quantized
        calls, same = generate_candidates(args.folders, quantized, args.batch, args.input, args.beams, args.threads,
                                          search, shared, args.new_tokens, flushed)
    rounds = max(1, args.calls // max(1, args.block))
    for row in summary(names, alternate(calls, rounds, args.block), same):
        print(f"{row['name']}: median {row['median_ms']:.3f} ms ({row['vs_first']:.2f}x the first), "
              f"p25 {row['p25_ms']:.3f}, min {row['min_ms']:.3f}, outputs {'as' if row['same_outputs'] else 'NOT as'}"
              f" the first's")


if __name__ == "__main__":
    main()
