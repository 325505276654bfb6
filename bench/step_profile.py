"""Steps per second of training configs, with the breakdown of a step (encoder, decoder, teacher, backward,
optimizer, data) and of a validation (loss pass, generation), each config run the same way one after the other.

    python -m bench.step_profile --config configs/distill/sft.yaml --config configs/distill/sft-cached.yaml --steps 40

Each config trains `--steps` steps from its start (no resume, no checkpoints, no logs written into its runs/ folder)
under `distill.step_profile.StepProfile`, with `--val-batches N` validation batches at the last step (none by
default). The caches a config names are built (or reused) before the first step and not counted. Prints one JSON line
per config, then each one's steps per second relative to the first. Nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from distill.__main__ import main as distill_main
from distill.errors import at_least_one


def profile(config: str, steps: int, skip: int, workdir: Path, val_batches: int) -> dict:
    """Run `config` for `steps` steps under StepProfile (and `val_batches` validation batches at the end, 0 for no
    validation) and return its summary."""
    out = workdir / f"{Path(config).stem}.json"
    callbacks = [{"class_path": "distill.step_profile.StepProfile", "init_args": {"path": str(out), "skip": skip}}]
    sys.argv = sys.argv[:1]  # LightningCLI reads sys.argv beside `args`: this command's own options are not its
    distill_main(["fit", "--config", config, "--trainer.max_steps", str(steps), "--trainer.val_check_interval",
                  str(steps), "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                  "--trainer.callbacks", json.dumps(callbacks), "--trainer.num_sanity_val_steps", "0",
                  "--trainer.default_root_dir", str(workdir / "root"), "--out", "null",
                  "--model.init_args.val_generate_interval", "null",  # the one validation generates
                  "--trainer.limit_val_batches", str(val_batches)])
    return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", required=True, help="a training config; repeat to compare")
    parser.add_argument("--steps", type=at_least_one, default=40)
    parser.add_argument("--skip", type=int, default=3, help="first steps left out of the means")
    parser.add_argument("--val-batches", type=int, default=0,
                        help="validation batches at the last step (default none: a student trained for a few steps "
                             "generates up to max_new_tokens on every verse, which says nothing of a real run's "
                             "validation; add StepProfile to a real run's callbacks for that)")
    args = parser.parse_args(argv)
    if args.skip >= args.steps:
        parser.error(f"--skip {args.skip} leaves no step of --steps {args.steps} to time; lower it")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.config:
            summary = profile(config, args.steps, args.skip, Path(tmp), args.val_batches)
            results.append(summary)
            print(json.dumps({"config": config, **summary}), flush=True)
    base = results[0]["steps_per_s"]
    for config, summary in zip(args.config, results, strict=True):
        ratio = summary["steps_per_s"] / base if base and summary["steps_per_s"] else float("nan")
        print(f"{config}: {summary['steps_per_s']} steps/s, {ratio:.2f}x the first", flush=True)


if __name__ == "__main__":
    main()
