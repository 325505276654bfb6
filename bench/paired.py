"""Two engine configurations side by side in time: each in its own process, kept loaded, the two alternated in blocks.

    python -m bench.paired --model student --engines onnx-int8,ct2-float32-onednn
    python -m bench.paired --model t5-small-6-2 --engines onnx-int8,ct2-int8-onednn --cells 32x4x16 --rounds 6

`make bench` runs each configuration in a fresh process, one cell after another, and keeps a configuration's lowest
median over its rounds; on a shared machine two readings minutes apart can differ by 1.5x, so a verdict near 1 can
flip from run to run. This check times the two configurations in the same minutes instead. Both are loaded once, each
in its own process (`python -m bench.served`, in the configuration's venv and environment, as `make bench` runs them:
in one process the two runtimes' worker threads, which spin for a while after each call, contend with each other on
a small machine and slow one of them); then, cell by cell, `--rounds` rounds of a block of `--block` timed calls of
each, the order alternating from round to round, after `--warmup` untimed calls of each.

Per cell: each configuration's median over all its timed calls, the ratio of the second's median to the first's (above
1: the first is faster), the lowest and highest of the rounds' own ratios (how far one block's reading can stray),
and the share of equal tokens in the two last outputs. The models, their inputs (the same token ids as `make bench`)
and the conversions are `make bench`'s (`bench.models`, `bench.runner`). Written to
`--out`/<model>/<first>-vs-<second>.json and .md after every cell (marked partial until the last).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import numpy as np

from bench.configs import BY_NAME, Config
from bench.errors import BenchError
from bench.models import MODELS, check_venvs, convert, make_models
from bench.options import add_model_options
from bench.report import agreement
from bench.runner import inputs_file, python_for, worker_job
from bench.steps import worker_env
from distill.errors import at_least_one, cli_errors
from eval.environment import environment

PROG = "python -m bench.paired"
CELLS = "1x1x16,1x1x64,1x1x256,1x4x16,1x4x64,1x4x256,8x1x16"  # batch 1, where the verdicts were closest, and one of 8

Cell = tuple[int, int, int]  # (batch, beams, input length)


class Side(Protocol):
    name: str

    def block(self, cell: Cell, calls: int) -> dict[str, Any]:
        """{"seconds": each call's, "tokens": the last call's ids}."""
        ...


class Served:
    """One configuration in `python -m bench.served`, loaded once and asked for blocks of calls."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name = name
        print(f"$ {' '.join(command)}", flush=True)
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ready = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            code = self.process.wait()
            raise BenchError(f"{self.name} stopped (exit {code}); its error is printed above")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def block(self, cell: Cell, calls: int) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps({"cell": list(cell), "calls": calls}) + "\n")
            self.process.stdin.flush()
        except BrokenPipeError:
            raise BenchError(f"{self.name} stopped (exit {self.process.wait()}); its error is printed above") from None
        return self._reply()

    def close(self) -> None:
        if self.process.stdin is not None and not self.process.stdin.closed:
            with contextlib.suppress(BrokenPipeError):
                self.process.stdin.close()  # the end of its requests: it exits
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Served:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


def parse_cells(text: str) -> list[Cell]:
    """"1x1x16,8x4x64" -> [(1, 1, 16), (8, 4, 64)]: batch x beams x input length, each >= 1."""
    cells = []
    for item in (t for t in text.split(",") if t.strip()):
        parts = item.strip().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) >= 1 for p in parts):
            raise ValueError(f"cell {item!r}: write BATCHxBEAMSxINPUT, e.g. 1x4x64 (each a whole number >= 1)")
        cells.append((int(parts[0]), int(parts[1]), int(parts[2])))
    if not cells:
        raise ValueError("--cells is empty; give at least one BATCHxBEAMSxINPUT")
    return cells


def measure_cell(first: Side, second: Side, cell: Cell, rounds: int, block: int, warmup: int) -> dict[str, Any]:
    """`warmup` untimed calls of each, then `rounds` rounds of a block of `block` timed calls of each, the first
    going first in even rounds and second in odd ones; the medians, the ratio and the rounds' ratios."""
    for side in (first, second):
        if warmup:
            side.block(cell, warmup)
    seconds: dict[str, list[float]] = {first.name: [], second.name: []}
    round_ratios = []
    last: dict[str, Any] = {}
    for round_ in range(rounds):
        order = (first, second) if round_ % 2 == 0 else (second, first)
        medians = {}
        for side in order:
            reply = side.block(cell, block)
            seconds[side.name] += reply["seconds"]
            medians[side.name] = float(np.median(reply["seconds"]))
            last[side.name] = reply["tokens"]
        round_ratios.append(medians[second.name] / medians[first.name])
    ms = {name: float(np.median(values)) * 1000 for name, values in seconds.items()}
    batch, beams, length = cell
    return {"batch_size": batch, "num_beams": beams, "input_length": length, "calls": rounds * block,
            "median_ms": ms, "ratio": ms[second.name] / ms[first.name],
            "round_ratios": {"min": min(round_ratios), "max": max(round_ratios), "each": round_ratios},
            "agreement": agreement(last[first.name], last[second.name])}


def render(results: dict[str, Any]) -> str:
    """results.md: the command, the machine, and one row per cell."""
    first, second = results["engines"]
    lines = [f"# {first} against {second} on {results['model']}, alternated in their own processes", "",
             f"`{results['command']}`", "",
             f"{results['created']}; {results['environment'].get('cpu', '')}; {results['threads']} threads, "
             f"{results['new_tokens']} new tokens; {results['rounds']} rounds of {results['block']} calls each "
             f"per cell.{'' if results['complete'] else ' Partial: stopped before the last cell.'}", "",
             f"| batch | decoding | input | {first} ms | {second} ms | ratio | rounds' ratios | tokens equal |",
             "|---|---|---|---|---|---|---|---|"]
    for c in results["cells"]:
        decoding = "greedy" if c["num_beams"] == 1 else f"beam {c['num_beams']}"
        lines.append(f"| {c['batch_size']} | {decoding} | {c['input_length']} | {c['median_ms'][first]:.2f} | "
                     f"{c['median_ms'][second]:.2f} | {c['ratio']:.2f}x | {c['round_ratios']['min']:.2f}-"
                     f"{c['round_ratios']['max']:.2f}x | {c['agreement']:.0%} |")
    lines += ["", f"Ratio: {second}'s median over {first}'s (above 1, {first} is faster)."]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_model_options(parser)
    parser.add_argument("--model", default="student", choices=list(MODELS), help="one of the bench's models")
    parser.add_argument("--engines", default="onnx-int8,ct2-float32-onednn",
                        help="two configurations of `python -m bench`, first,second (default %(default)s)")
    parser.add_argument("--cells", default=CELLS, help="BATCHxBEAMSxINPUT,... (default %(default)s)")
    parser.add_argument("--rounds", type=at_least_one, default=10)
    parser.add_argument("--block", type=at_least_one, default=10, help="timed calls of each per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each per cell")
    parser.add_argument("--out", type=Path, default=Path("bench/results/paired"))
    args = parser.parse_args(argv)
    names = [n for n in args.engines.split(",") if n]
    unknown = [n for n in names if n not in BY_NAME]
    if len(names) != 2 or unknown or names[0] == names[1]:
        parser.error(f"--engines takes two different configurations, first,second, among {', '.join(BY_NAME)}"
                     + (f" (unknown: {unknown})" if unknown else ""))
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    try:
        args.cell_list = parse_cells(args.cells)
    except ValueError as err:
        parser.error(str(err))
    args.configs = [BY_NAME[n] for n in names]
    args.models = [args.model]
    args.min_seconds, args.max_repeats, args.repeats = 0.0, args.block, args.block  # the worker job's keys
    return args


def write(results: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    out.with_suffix(".md").write_text(render(results))


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """The check of the module docstring; its results (also written under `--out`)."""
    args = parse_args(argv)
    check_venvs(args, args.configs)
    folder = make_models(args)[args.model]
    folders, failed = convert(args.model, folder, args.configs, args)
    missing = [c.name for c in args.configs if c.folder not in folders]
    if missing:
        raise BenchError(f"could not convert {args.model} for {', '.join(missing)}: "
                         + "; ".join(failed.values()))
    model_config = json.loads((folder / "config.json").read_text())
    first, second = args.configs
    out = args.out / args.model / f"{first.name}-vs-{second.name}"
    results: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"{PROG} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(args.threads), "model": args.model, "engines": [first.name, second.name],
        "threads": args.threads, "new_tokens": args.new_tokens, "rounds": args.rounds, "block": args.block,
        "warmup": args.warmup, "cells": [], "complete": False}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-paired.") as tmp:
        grid = {"batch_sizes": sorted({b for b, _, _ in args.cell_list}),
                "input_lengths": sorted({n for _, _, n in args.cell_list})}
        inputs = inputs_file(args, grid, Path(tmp), model_config["eos_token_id"])
        with _served(first, args, folders, inputs, model_config, Path(tmp)) as a, \
                _served(second, args, folders, inputs, model_config, Path(tmp)) as b:
            results["versions"] = {first.name: a.ready["versions"], second.name: b.ready["versions"]}
            for cell in args.cell_list:
                row = measure_cell(a, b, cell, args.rounds, args.block, args.warmup)
                results["cells"].append(row)
                print(f"[paired] {cell}: {first.name} {row['median_ms'][first.name]:.2f} ms, {second.name} "
                      f"{row['median_ms'][second.name]:.2f} ms: {row['ratio']:.2f}x (rounds "
                      f"{row['round_ratios']['min']:.2f}-{row['round_ratios']['max']:.2f}x)", flush=True)
                write(results, out)
    results["complete"], results["seconds"] = True, time.perf_counter() - start
    write(results, out)
    print(render(results))
    print(f"bench.paired: {out.with_suffix('.md')} ({results['seconds'] / 60:.1f} min)")
    return results


def _served(config: Config, args: argparse.Namespace, folders: dict[str, Path], inputs: Path,
            model_config: dict[str, Any], tmp: Path) -> Served:
    job = worker_job(config, args.model, folders[config.folder], [], inputs, args, model_config)
    job_file = tmp / f"{config.name}.job.json"
    job_file.write_text(json.dumps(job))
    return Served(config.name, [python_for(config, args), "-m", "bench.served", str(job_file)],
                  {**worker_env(), **config.env})


def main(argv: list[str] | None = None) -> None:
    """`python -m bench.paired`: `run`, its UserError as one line and status 2."""
    with cli_errors(PROG):
        run(argv)


if __name__ == "__main__":
    main()
