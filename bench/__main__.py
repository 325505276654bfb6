"""`make bench`: OnnxT5 against torch, CTranslate2 and optimum on the same weights, inputs, output length and threads.

    python -m bench                        # the full grid (batch 1, 8, 32 x greedy, beam 4 x input 16, 64, 256)
    python -m bench --grid quick           # batch 1 and 8, input 64: a smaller grid, for before/after checks

Models: the default student (`runs/distill/student`), a t5-small-shaped random teacher (6+6 layers, 60.5M parameters)
and its 6->2 student (`python -m distill.student`), all three made or read under `--work` (default bench/work).
Engines, each in its own process (`python -m bench.worker`, bench/worker.py), so that its peak memory is its own:

    torch          transformers `generate`, fp32 (the project venv)
    onnx-fp32      OnnxT5 on `python -m export` graphs, run from a venv that holds only numpy, onnxruntime and
    onnx-int8      tokenizers (.venv-serve): it proves the runtime needs nothing else, and its size is measured
    ct2-int8       CTranslate2 on `ct2-transformers-converter --quantization int8` / `float32`, its own decoding
    ct2-fp32
    optimum-fp32   optimum-onnx's ORTModelForSeq2SeqLM on `optimum-cli export onnx` graphs, and on its own dynamic
    optimum-int8   int8 of them (ORTQuantizer), in a venv of its own (.venv-optimum: it needs transformers < 4.58)

Every engine gets the same token ids (real test verses joined end to end and cut to the input length, EOS last, no
padding), min_new_tokens = max_new_tokens = 32, and the same thread count. Each cell: one untimed call, then the
median of `--repeats` calls. Outputs are compared with torch's, cell by cell (share of equal tokens), so that no engine
wins by decoding something else. Written to bench/results/: results.json, results.md (tables with the ratios against
CTranslate2 int8 and against torch, and the goals), speedup.png. What `make bench` needs and lacks (a venv, the
student) prints one `python -m bench: error: ...` line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from bench.models import check_venvs, convert, make_models
from bench.report import goals, plot, render, summarize
from bench.runner import inputs_file, run_engine
from distill.errors import cli_errors
from eval.environment import environment

PROG = "python -m bench"
GRIDS = {"full": {"batch_sizes": [1, 8, 32], "num_beams": [1, 4], "input_lengths": [16, 64, 256]},
         "quick": {"batch_sizes": [1, 8], "num_beams": [1, 4], "input_lengths": [64]}}
ENGINES = ("torch", "onnx-fp32", "onnx-int8", "ct2-int8", "ct2-fp32", "optimum-fp32", "optimum-int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of the module docstring; `--models` and `--engines` as lists, checked."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", type=Path, default=Path("runs/distill/student"),
                        help="the default student (default %(default)s; made by make distill)")
    parser.add_argument("--data", type=Path, default=Path("data/bible"), help="test sources for the inputs")
    parser.add_argument("--tokenizer", type=Path, default=Path("models/teacher"),
                        help="folder whose tokenizer.json makes the input ids (default: the committed teacher's, which "
                             "the default student shares)")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="full")
    parser.add_argument("--models", default="student,t5-small-6-2,t5-small-6-6",
                        help="comma-separated subset of student, t5-small-6-2, t5-small-6-6")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma-separated subset of " + ", ".join(ENGINES))
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="for every engine (default %(default)s)")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per cell (median reported)")
    parser.add_argument("--work", type=Path, default=Path("bench/work"), help="models and conversions (cached)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument("--serve-python", type=Path, default=Path(".venv-serve/bin/python"),
                        help="python of the venv holding only what OnnxT5 needs (make bench creates it)")
    parser.add_argument("--optimum-python", type=Path, default=Path(".venv-optimum/bin/python"),
                        help="python of the optimum venv (make bench creates it)")
    args = parser.parse_args(argv)
    args.models = [m for m in args.models.split(",") if m]
    args.engines = [e for e in args.engines.split(",") if e]
    unknown = [e for e in args.engines if e not in ENGINES] + [
        m for m in args.models if m not in ("student", "t5-small-6-2", "t5-small-6-6")]
    if unknown:
        parser.error(f"unknown model or engine {unknown}")
    if "torch" not in args.engines:
        parser.error("--engines must include torch: every output is checked against it")
    return args


def run(argv: list[str] | None = None) -> None:
    """The whole bench of the module docstring; raises BenchError for what it needs and lacks."""
    args = parse_args(argv)
    grid = GRIDS[args.grid]
    venvs = check_venvs(args)
    models = make_models(args)
    cells = [[b, k, n] for b in grid["batch_sizes"] for k in grid["num_beams"] for n in grid["input_lengths"]]
    results = {"schema_version": 1, "created": datetime.now(UTC).isoformat(timespec="seconds"),
               "command": f"{PROG} " + " ".join(argv if argv is not None else sys.argv[1:]),
               "environment": environment(args.threads), "threads": args.threads, "new_tokens": args.new_tokens,
               "repeats": args.repeats, "grid": grid, "venvs": venvs, "models": {}}
    start = time.perf_counter()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench.") as tmp:
        tmp = Path(tmp)
        for name, folder in models.items():
            folders = convert(name, folder, args)
            config = json.loads((folder / "config.json").read_text())
            inputs = inputs_file(args, grid, tmp, config["eos_token_id"])
            results["models"][name] = {"path": str(folder), "engines": {
                engine: run_engine(engine, name, folders, folder, cells, inputs, args, config, tmp)
                for engine in args.engines}}
    summarize(results)
    results["goals"] = goals(results)
    results["seconds"] = time.perf_counter() - start
    for model in results["models"].values():  # the tokens served their purpose (agreement); keep the file small
        for engine in model["engines"].values():
            for c in engine["cells"]:
                c.pop("tokens")
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    report = render(results)
    (args.out / "results.md").write_text(report)
    plot(results, args.out / "speedup.png")
    print(report)
    print(f"bench: {args.out / 'results.md'} ({results['seconds'] / 60:.1f} min)")


def main(argv: list[str] | None = None) -> None:
    """`python -m bench`: `run`, its UserError as one line and status 2."""
    with cli_errors(PROG):
        run(argv)


if __name__ == "__main__":
    main()
