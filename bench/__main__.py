"""`make bench`: OnnxT5 at its best against every peer at its best, on the same weights, inputs, output length and
threads, at the sizes users bring.

    python -m bench                        # every shape and configuration (the larger shapes on the quick grid)
    python -m bench --grid quick           # batch 1 and 8, input 64, everywhere: for before/after checks
    python -m bench --models t5-base-12-12 --grid full --engines onnx,ct2,torch

Models (`bench.models`): the default student (`runs/distill/student`), and t5-small 6-6 and its 6->2 student,
t5-base 12-12 and 12->3, mt5-small 8-8 and 8->2 with random weights in their published configurations, made under
`--work` (default bench/work) on first use. Grids: full = batch 1, 8, 32 x greedy, beam 4 x input 16, 64, 256; quick =
batch 1 and 8, input 64. By default the t5-base and mt5-small shapes get the quick grid; `--grid full` gives every
shape the full one.

Engine configurations (`bench.configs`, `--engines` takes names or families), each in its own process
(`python -m bench.worker`), so that its peak memory is its own: OnnxT5 fp32 and int8 from a venv holding only numpy,
onnxruntime and tokenizers (.venv-serve: it proves the runtime needs nothing else); torch fp32, bf16 autocast and
torch.ao dynamic int8; CTranslate2 with each compute type it has on CPU, with and without CT2_USE_MKL=1; optimum's
export and its int8, two decoders or merged (.venv-optimum: it needs transformers < 4.58).

Every configuration gets the same token ids (real test verses joined end to end and cut to the input length, EOS last,
no padding), min_new_tokens = max_new_tokens = 32, and the same thread count. Each cell: one untimed call, then the
median of at least `--repeats` calls, more until `--min-seconds` of calls. Three stages per model:
1. probe: every configuration on two cells, batch 1 greedy and batch 8 beam 4 (input 64);
2. the rest of the grid for torch fp32 and for each configuration within 1.3x of its family's fastest on a probe cell
   (`--no-prune`: all of them): one 1.3x slower than a sibling at both ends is not its family's best anywhere;
3. the cells whose verdict (OnnxT5 at its best against the best peer) is a loss, however far, or a win by less than
   1.25x (at batch 1 greedy: below 1.25 x the 1.5x goal) are measured again in `--recheck-rounds` more rounds,
   the two configurations that made it in alternating order (the reverse of the first stage, then the first order
   again, ...), each in a fresh process, and each keeps its lowest median: a verdict rests on several runs, not on
   one process that the machine happened to slow (a slow spell only ever adds time, so the lowest median is the one
   to keep). So is each configuration's cell that took over 1.5x as long as
   one of its cells with at least as much work (batch, beams and input length alike): a reading a slow spell made,
   for a peer as for OnnxT5, however far from 1 its verdict.
Outputs are compared with torch fp32's, cell by cell (share of equal tokens), so that none wins by decoding something
else. For each of our exports `bench.floor` measures the time per token at batch 1 greedy against
the memory-bandwidth floor. Written to bench/results/: results.json, results.md (goals, best per cell, every
configuration, agreement, memory, floor), speedup.png, after each model too (a run stopped later keeps the models it
finished, marked partial; `--resume` keeps them and goes on with the next model, `bench.resume`). What `make bench`
needs and lacks (a venv, the student) prints one `python -m bench: error: ...` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.configs import BY_NAME, CONFIGS, REFERENCE, select
from bench.models import MODELS, check_venvs, convert, make_models
from bench.options import add_model_options
from bench.report import (
    goals,
    kept_after_probe,
    merge_cells,
    merge_recheck,
    plot,
    render,
    summarize,
    to_measure_again,
)
from bench.resume import settings, stopped_run
from bench.runner import inputs_file, run_config
from bench.steps import run_step
from distill.errors import at_least_one, cli_errors
from eval.environment import environment
from export.runtime.folder import read_meta

PROG = "python -m bench"
GRIDS = {"full": {"batch_sizes": [1, 8, 32], "num_beams": [1, 4], "input_lengths": [16, 64, 256]},
         "quick": {"batch_sizes": [1, 8], "num_beams": [1, 4], "input_lengths": [64]}}
PROBE = {(1, 1, 64), (8, 4, 64)}  # the cells every configuration runs; the rest of the grid only the kept ones


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of the module docstring; `--models` and `--engines` as lists, checked."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    add_model_options(parser)
    parser.add_argument("--grid", choices=("default", "quick", "full"), default="default",
                        help="default: the full grid for the small shapes, the quick one for the larger")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated subset of " + ", ".join(MODELS))
    parser.add_argument("--engines", default="all",
                        help="comma-separated configurations or families (default all: " + ", ".join(BY_NAME) + ")")
    parser.add_argument("--repeats", type=at_least_one, default=3, help="timed calls per cell at least")
    parser.add_argument("--min-seconds", type=float, default=2.0,
                        help="more timed calls until they add up to this (default %(default)s)")
    parser.add_argument("--max-repeats", type=at_least_one, default=30)
    parser.add_argument("--recheck-repeats", type=int, default=5,
                        help="timed calls per cell in each further round on close verdicts (0: no further rounds)")
    parser.add_argument("--recheck-rounds", type=int, default=2,
                        help="further rounds on close verdicts, alternating the order (default %(default)s)")
    parser.add_argument("--no-floor", action="store_true", help="skip the bandwidth-floor measurement")
    parser.add_argument("--no-prune", dest="prune", action="store_false",
                        help="run every configuration on the whole grid, not only those the probe cells keep")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--resume", action="store_true",
                        help="keep the models a stopped run with the same options finished in --out, and go on")
    args = parser.parse_args(argv)
    if args.recheck_repeats < 0 or args.recheck_rounds < 0:
        parser.error("--recheck-repeats and --recheck-rounds must be 0 or more")
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model {unknown}; choose among {', '.join(MODELS)}")
    try:
        args.configs = list(CONFIGS) if args.engines == "all" else select([e for e in args.engines.split(",") if e])
    except ValueError as err:
        parser.error(str(err))
    if REFERENCE not in [c.name for c in args.configs]:
        parser.error(f"--engines must include {REFERENCE}: every output is checked against it")
    return args


def model_inputs(name: str, folder: Path, grid_name: str, args: argparse.Namespace, tmp: Path) -> Path:
    """The input ids of every cell of `name`'s grid, in a folder of its own under `tmp`."""
    config = json.loads((folder / "config.json").read_text())
    (tmp / name).mkdir()
    return inputs_file(args, GRIDS[grid_name], tmp / name, config["eos_token_id"])


def measure_model(name: str, folder: Path, args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every configuration on one model, and the bandwidth floor of our export."""
    grid_name = args.grid if args.grid != "default" else MODELS[name].grid
    grid = GRIDS[grid_name]
    cells = [[b, k, n] for b in grid["batch_sizes"] for k in grid["num_beams"] for n in grid["input_lengths"]]
    folders, failed = convert(name, folder, args.configs, args)
    config = json.loads((folder / "config.json").read_text())
    inputs = model_inputs(name, folder, grid_name, args, tmp)
    probe = [c for c in cells if tuple(c) in PROBE] or [cells[0], cells[-1]]
    rest = [c for c in cells if c not in probe]
    entry: dict[str, Any] = {"path": str(folder), "grid": grid_name, "cells": cells, "probe": probe,
                             "failed_folders": failed, "configs": {},
                             "export_id": read_meta(folders["onnx"]).export_id if "onnx" in folders else None}
    for c in args.configs:
        if c.folder not in folders:
            entry["configs"][c.name] = {"error": f"its {c.folder} folder could not be made: {failed[c.folder]}"}
            continue
        entry["configs"][c.name] = run_config(c, name, folders[c.folder], probe, inputs, args, config, tmp)
    entry["kept"] = kept_after_probe(entry["configs"]) if args.prune else [
        n for n, out in entry["configs"].items() if "cells" in out]
    for c in args.configs:
        if c.name in entry["kept"] and rest:
            merge_cells(entry, c.name, run_config(c, name, folders[c.folder], rest, inputs, args, config, tmp))
    if "onnx" in folders and not args.no_floor:
        out = tmp / name / "floor.json"
        run_step([sys.executable, "-m", "bench.floor", "--onnx", str(folders["onnx"]), "--threads", str(args.threads),
                  "--new-tokens", str(args.new_tokens), "--json", str(out)], f"{name}: bandwidth floor")
        entry["floor"] = json.loads(out.read_text())
    entry["inputs"], entry["folders"] = inputs, folders
    return entry


def recheck(results: dict[str, Any], args: argparse.Namespace, tmp: Path) -> None:
    """The further rounds: the close verdicts' two configurations again on those cells, and each configuration's
    outlying cells (`report.to_measure_again`), the reverse order first, then alternating; each round asks again
    (a cell that a round settled is not measured again)."""
    for round_ in range(args.recheck_rounds):
        for name, model in results["models"].items():
            again = to_measure_again(model)
            config = json.loads((Path(model["path"]) / "config.json").read_text())
            order = [BY_NAME[n] for n in again]
            for c in reversed(order) if round_ % 2 == 0 else order:
                out = run_config(c, name, model["folders"][c.folder], [list(k) for k in again[c.name]],
                                 model["inputs"], args, config, tmp, repeats=args.recheck_repeats)
                merge_recheck(model, c.name, out, args.new_tokens)
        summarize(results)


def run(argv: list[str] | None = None) -> None:
    """The whole bench of the module docstring; raises BenchError for what it needs and lacks."""
    args = parse_args(argv)
    venvs = check_venvs(args, args.configs)
    models = make_models(args)
    results: dict[str, Any] = {
        "schema_version": 2, "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": f"{PROG} " + " ".join(argv if argv is not None else sys.argv[1:]),
        "environment": environment(args.threads), "threads": args.threads, "new_tokens": args.new_tokens,
        "repeats": args.repeats, "min_seconds": args.min_seconds, "recheck_repeats": args.recheck_repeats,
        "recheck_rounds": args.recheck_rounds,
        "grids": GRIDS, "venvs": venvs, "configs": {c.name: asdict(c) for c in args.configs},
        "planned": list(models), "settings": settings(args), "models": {}}
    earlier = 0.0  # the stopped run's seconds, when this one resumes it
    if args.resume:
        stopped = stopped_run(args.out, results["settings"], results["environment"]["cpu"])
        results["models"], earlier = stopped["models"], stopped["seconds"]
        results["created"] = stopped["created"]
        results["resumed"] = [*stopped.get("resumed", []), datetime.now(UTC).isoformat(timespec="seconds")]
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench.") as tmp:
        for name, folder in models.items():
            if name in results["models"]:  # kept from the stopped run: its inputs again, for the further rounds
                model = results["models"][name]
                model["inputs"] = model_inputs(name, folder, model["grid"], args, Path(tmp))
                continue
            results["models"][name] = measure_model(name, folder, args, Path(tmp))
            summarize(results)
            write_results(results, args.out, earlier + time.perf_counter() - start, complete=False)
        if args.recheck_repeats:
            recheck(results, args, Path(tmp))
    report = write_results(results, args.out, earlier + time.perf_counter() - start, complete=True)
    print(report)
    print(f"bench: {args.out / 'results.md'} ({(earlier + time.perf_counter() - start) / 60:.1f} min)")


def write_results(results: dict[str, Any], out: Path, seconds: float, complete: bool) -> str:
    """results.json, results.md and speedup.png in `out` from what is measured so far (`results` summarized); the
    report's text. Written after each model too, so that a run stopped later keeps the models it finished
    (`"complete": false` until the end). The tokens served their purpose (agreement) and are left out, as is the
    worker's input file (made again on --resume); the folders measured stay, for --resume to check."""
    snapshot: dict[str, Any] = {k: v for k, v in results.items() if k != "models"}
    snapshot["models"] = {}
    for name, model in results["models"].items():
        kept = {k: v for k, v in model.items() if k not in ("inputs", "folders", "configs")}
        kept["folders"] = {kind: str(folder) for kind, folder in model.get("folders", {}).items()}
        kept["configs"] = {config: {**measured, "cells": [{k: v for k, v in c.items() if k != "tokens"}
                                                           for c in measured["cells"]]} if "cells" in measured
                           else measured for config, measured in model["configs"].items()}
        snapshot["models"][name] = kept
    snapshot["goals"] = goals(snapshot)
    snapshot["seconds"], snapshot["complete"] = seconds, complete
    (out / "results.json").write_text(json.dumps(snapshot, indent=2) + "\n")
    report = render(snapshot)
    (out / "results.md").write_text(report)
    plot(snapshot, out / "speedup.png")
    return report


def main(argv: list[str] | None = None) -> None:
    """`python -m bench`: `run`, its UserError as one line and status 2."""
    with cli_errors(PROG):
        run(argv)


if __name__ == "__main__":
    main()
