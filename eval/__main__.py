"""Evaluate a teacher, its students and their ONNX / int8 variants side by side, measured the same way, in one report.

    python -m eval --config configs/eval/default.yaml [--out runs/eval/NAME] [--limit N]

1. The config (eval/config.py) is validated and every variant folder checked before anything runs.
2. The test examples are read once (eval/data.py); every variant gets the same sources, generation settings and
   thread count.
3. Each variant runs in its own worker process (`python -m eval.worker`, eval/worker.py): load, speed grid
   (eval/speed.py), predictions; its peak memory is its own.
4. Then (eval/harness.py): corpus metrics and paired bootstrap against the reference variant, speed-ups against the
   reference, the quality gate (eval/quality.py); then the run folder (eval/report.py: results.json, report.md,
   plots, predictions).
5. The summary table is printed. Exit status 0; 1 with a message when the quality gate fails (an export that loses
   more than its margin against its PyTorch source, a student more than its margin against its teacher; the report is
   written first); 2 with one `python -m eval: error: ...` line when the config, the data or a worker fails (as for
   a mistyped option), so a caller can tell a worse model from a run that could not be made.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from distill.errors import cli_errors
from eval.config import check_paths, load_config
from eval.data import load_examples
from eval.errors import GateFailed
from eval.harness import evaluate
from eval.quality import gate_failure
from eval.report import check_run_dir, write_report
from eval.tables import summary_table

PROG = "python -m eval"


def run(argv: list[str] | None = None) -> None:
    """The whole run of the module docstring; raises UserError for what cannot run, GateFailed after the report."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/eval/default.yaml"))
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: runs/eval/<config name>); "
                                                                 "files of an earlier run there are replaced")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N examples (overrides the config)")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    if args.limit is not None:
        if args.limit < 1:
            parser.error(f"--limit must be >= 1, got {args.limit}")
        config = dataclasses.replace(config, dataset=dataclasses.replace(config.dataset, limit=args.limit))
    check_paths(config)
    run_dir = args.out or Path("runs/eval") / args.config.stem
    check_run_dir(run_dir)
    examples = load_examples(config.dataset)
    command = f"{PROG} " + " ".join(sys.argv[1:] if argv is None else argv)
    results, predictions, checks = evaluate(config, examples, run_dir, command, str(args.config))
    written = write_report(results, run_dir, predictions, (examples.sources, examples.references))
    print(summary_table(results))
    print(f"\nreport: {written['report']}\nresults: {written['results']}")
    failure = gate_failure(checks)
    if failure:
        raise GateFailed(failure + f"\n(report written to {written['report']})")


def main(argv: list[str] | None = None) -> None:
    """`python -m eval`: `run`, its UserError as one line and status 2, a failed gate as status 1."""
    with cli_errors(PROG):
        try:
            run(argv)
        except GateFailed as failed:  # a measured result, not a mistake: status 1, apart from bad input's 2
            print(failed, file=sys.stderr)
            raise SystemExit(1) from None


if __name__ == "__main__":
    main()
