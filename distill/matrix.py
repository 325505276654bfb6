"""Run a matrix of distillation recipes in sequence, resumably, and tabulate minutes of training and test scores.

    python -m distill.matrix --matrix configs/distill/matrix/recipes.yaml            # make distill-matrix
    python -m distill.matrix --matrix configs/distill/matrix/recipes.yaml --dry-run  # the commands, in order

A recipe is a list of phases; a phase is a training config (`python -m distill fit --config X --ckpt_path last`),
optionally followed by writing its last checkpoint as a folder (`last_to`) that a later phase starts from. Phases
shared by several recipes run once. A phase whose `out` folder records its config's `max_steps` is done and skipped;
any other resumes from its last checkpoint, so the matrix can be killed and run again. The wall-clock minutes of
each phase (start-up, cache building and validation included) are kept in `<workdir>/state.json`, summed over
attempts and saved every 30 seconds. When a recipe's phases are done, its final folder is scored on the test split
with `python -m distill.score` into `<workdir>/<recipe>/metrics.json`, and `<workdir>/summary.json` and a table on
stdout give each recipe's minutes, BLEU, chrF and its gap to the teacher.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from distill.errors import UserError, cli_errors
from distill.files import write_text_whole

# run(command) -> exit status; `distill.matrix` runs each command as a child process
Runner = Callable[[list[str]], int]
SAVE_EVERY_S = 30


class MatrixError(UserError):
    """A matrix file that cannot be run as given, or a phase that failed."""


def load_matrix(path: Path) -> dict:
    """The matrix file, checked: every recipe's phases exist and every phase names a readable config with `out`."""
    try:
        matrix = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise MatrixError(f"--matrix {path}: cannot read it ({err}).") from None
    if not isinstance(matrix, dict) or not isinstance(matrix.get("recipes"), list) or not isinstance(
            matrix.get("phases"), dict):
        raise MatrixError(f"--matrix {path}: needs `phases:` (name -> {{config, last_to}}) and `recipes:` (a list of "
                          "{name, phases}).")
    for recipe in matrix["recipes"]:
        missing = [p for p in recipe.get("phases", []) if p not in matrix["phases"]]
        if not recipe.get("name") or not recipe.get("phases") or missing:
            raise MatrixError(f"--matrix {path}: recipe {recipe!r} needs a name and phases defined under `phases:`"
                              + (f" (unknown: {missing})" if missing else "") + ".")
    for name, phase in matrix["phases"].items():
        config = Path(phase.get("config", ""))
        if not config.is_file():
            raise MatrixError(f"--matrix {path}: phase {name!r} names config {str(config)!r}, which is not a file.")
        phase["settings"] = _phase_settings(config)
    return matrix


def _phase_settings(config: Path) -> dict:
    """What the runner reads from a training config: its output folder, step count and last checkpoint."""
    data = yaml.safe_load(config.read_text(encoding="utf-8"))
    trainer = data.get("trainer") or {}
    last = [c["init_args"]["dirpath"] for c in trainer.get("callbacks") or []
            if (c.get("init_args") or {}).get("save_last") and (c.get("init_args") or {}).get("dirpath")]
    if not data.get("out") or not trainer.get("max_steps") or not last:
        raise MatrixError(f"{config}: a matrix phase needs `out:`, `trainer.max_steps` and a ModelCheckpoint with "
                          "save_last and dirpath (its last.ckpt is what a run resumes from).")
    return {"out": data["out"], "max_steps": int(trainer["max_steps"]), "last_ckpt": str(Path(last[0]) / "last.ckpt")}


def phase_done(settings: dict) -> bool:
    """Whether the phase's `out` folder was written at its config's last step."""
    meta = Path(settings["out"]) / "train_meta.json"
    try:
        return json.loads(meta.read_text())["global_step"] >= settings["max_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _timed(command: list[str], on_tick: Callable[[float], None]) -> int:
    """Run `command` as a child process, calling `on_tick(seconds so far)` every SAVE_EVERY_S and at the end."""
    start = time.monotonic()
    with subprocess.Popen(command) as process:
        while True:
            try:
                status = process.wait(timeout=SAVE_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                on_tick(time.monotonic() - start)
    on_tick(time.monotonic() - start)
    return status


def run_matrix(matrix: dict, workdir: Path, only: list[str] | None = None, dry_run: bool = False,
               runner: Callable[[list[str], Callable[[float], None]], int] = _timed) -> list[dict]:
    """Run the recipes (all, or `only` those) and return one summary row per recipe."""
    recipes = [r for r in matrix["recipes"] if not only or r["name"] in only]
    unknown = sorted(set(only or []) - {r["name"] for r in matrix["recipes"]})
    if unknown:
        raise MatrixError(f"--only {unknown}: no such recipe; the matrix has {[r['name'] for r in matrix['recipes']]}.")
    workdir.mkdir(parents=True, exist_ok=True)
    state_path = workdir / "state.json"
    state: dict[str, Any] = json.loads(state_path.read_text()) if state_path.is_file() else {}
    python = sys.executable
    seen: set[str] = set()
    for recipe in recipes:
        for name in recipe["phases"]:
            if name in seen:  # shared with an earlier recipe
                continue
            seen.add(name)
            phase = matrix["phases"][name]
            settings = phase["settings"]
            if phase_done(settings):
                print(f"matrix: phase {name} is done ({settings['out']})", file=sys.stderr)
            else:
                command = [python, "-m", "distill", "fit", "--config", phase["config"], "--ckpt_path", "last"]
                if dry_run:
                    print(" ".join(command))
                else:
                    before = state.get(name, {}).get("seconds", 0.0)

                    def save(seconds: float, name: str = name, before: float = before) -> None:
                        state[name] = {"seconds": before + seconds}
                        write_text_whole(state_path, json.dumps(state, indent=2) + "\n")

                    print(f"matrix: phase {name}: {' '.join(command)}", file=sys.stderr, flush=True)
                    if runner(command, save) != 0:
                        raise MatrixError(f"phase {name} ({phase['config']}) failed; fix it and run the matrix "
                                          "again: it resumes from the phase's last checkpoint.")
            last_to = phase.get("last_to")
            if last_to and _stale(Path(last_to), Path(settings["last_ckpt"])):
                command = [python, "-m", "distill.checkpoint", "--ckpt", settings["last_ckpt"], "--out", last_to]
                if dry_run:
                    print(" ".join(command))
                elif runner(command, lambda _: None) != 0:
                    raise MatrixError(f"writing {settings['last_ckpt']} to {last_to} failed.")
        _score(matrix, recipe, workdir, python, dry_run, runner)
    rows = [_row(matrix, recipe, workdir, state) for recipe in recipes]
    if not dry_run:
        write_text_whole(workdir / "summary.json", json.dumps(rows, indent=2) + "\n")
    return rows


def _stale(folder: Path, ckpt: Path) -> bool:
    meta = folder / "distill_meta.json"
    return not meta.is_file() or (ckpt.is_file() and ckpt.stat().st_mtime > meta.stat().st_mtime)


def _score(matrix: dict, recipe: dict, workdir: Path, python: str, dry_run: bool,
           runner: Callable[[list[str], Callable[[float], None]], int]) -> None:
    model = Path(matrix["phases"][recipe["phases"][-1]]["settings"]["out"])
    metrics = workdir / recipe["name"] / "metrics.json"
    weights = model / "model.safetensors"
    if metrics.is_file() and weights.is_file() and metrics.stat().st_mtime > weights.stat().st_mtime:
        return
    score = matrix.get("score") or {}
    command = [python, "-m", "distill.score", "--model", str(model), "--data", score.get("data", "data/bible"),
               "--split", score.get("split", "test"), "--out", str(metrics),
               "--predictions", str(workdir / recipe["name"] / "predictions.txt")]
    if score.get("extra_references"):
        command += ["--extra-references", *score["extra_references"]]
    if dry_run:
        print(" ".join(command))
        return
    metrics.parent.mkdir(parents=True, exist_ok=True)
    if runner(command, lambda _: None) != 0:
        raise MatrixError(f"scoring {model} failed.")


def _row(matrix: dict, recipe: dict, workdir: Path, state: dict) -> dict:
    seconds = sum(state.get(name, {}).get("seconds", 0.0) for name in recipe["phases"])
    metrics = _read(workdir / recipe["name"] / "metrics.json")
    teacher = _read(Path(matrix.get("teacher_metrics", "models/teacher/metrics.json")))
    bleu, teacher_bleu = metrics.get("bleu"), teacher.get("bleu")
    return {"recipe": recipe["name"], "phases": recipe["phases"], "minutes": round(seconds / 60, 1),
            "bleu": bleu, "chrf": metrics.get("chrf"), "bleu_multi_ref": metrics.get("bleu_multi_ref"),
            "teacher_bleu": teacher_bleu,
            "gap": round(bleu - teacher_bleu, 2) if bleu is not None and teacher_bleu is not None else None}


def _read(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.matrix", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrix", type=Path, default=Path("configs/distill/matrix/recipes.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path("runs/matrix"))
    parser.add_argument("--only", nargs="+", default=None, help="run only these recipes (and the phases they need)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands that would run, in order")
    args = parser.parse_args(argv)
    with cli_errors("python -m distill.matrix"):
        rows = run_matrix(load_matrix(args.matrix), args.workdir, args.only, args.dry_run)
    if args.dry_run:
        return
    print("| recipe | phases | minutes | test BLEU | chrF | BLEU with extra refs | gap to teacher |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['recipe']} | {' -> '.join(row['phases'])} | {row['minutes']} | {row['bleu']} | {row['chrf']} "
              f"| {row['bleu_multi_ref']} | {row['gap']} |")


if __name__ == "__main__":
    main()
