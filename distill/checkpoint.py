"""Lightning checkpoints of `Seq2SeqModule` or `DistillModule`: write one as a `save_pretrained` folder (e.g. the best
one of a run that is still training, the last one of a run, or one of a run that was interrupted), and find a run's
best one on disk (what `python -m distill fit --out` writes).

    python -m distill.checkpoint --ckpt runs/teacher/checkpoints/best-step=4000-val_bleu=17.10.ckpt --out models/teacher
"""

from __future__ import annotations

import argparse
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from distill.distillation import DistillModule
from distill.errors import ModelError, cli_errors
from distill.files import check_output
from distill.module import Seq2SeqModule

# the modules a checkpoint may name (`_class_path`, written by LightningCLI); nothing else is imported from a file
MODULES = {f"{cls.__module__}.{cls.__qualname__}": cls for cls in (Seq2SeqModule, DistillModule)}


def read_checkpoint(ckpt: Path | str) -> dict[str, Any]:
    """The contents of a Lightning checkpoint file (tensors on the CPU, nothing but weights and plain data unpickled);
    ModelError when the file is missing, truncated or corrupt."""
    ckpt = Path(ckpt)
    if ckpt.is_dir():
        raise ModelError(f"Checkpoint {ckpt} is a folder; give a .ckpt file (e.g. runs/teacher/checkpoints/last.ckpt).")
    if not ckpt.is_file():
        raise ModelError(f"Checkpoint {ckpt} does not exist.")
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    except (EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError, OSError) as err:
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"Checkpoint {ckpt} cannot be read: it is truncated or corrupt ({type(err).__name__}: "
                         f"{reason}). A run killed while saving leaves such a file: delete it and use another "
                         "checkpoint of the run (resume with --ckpt_path PATH, or convert one with "
                         "`python -m distill.checkpoint --ckpt PATH --out DIR`).") from err
    if not isinstance(checkpoint, dict):
        raise ModelError(f"{ckpt} is not a Lightning checkpoint of the distill module (it holds a "
                         f"{type(checkpoint).__name__}, not a dict of states).")
    return checkpoint


def checkpoint_to_pretrained(ckpt: Path, out: Path) -> Path:
    """Write the module of Lightning checkpoint `ckpt` to `out` as a `save_pretrained` folder; returns `out`."""
    checkpoint = read_checkpoint(ckpt)
    lightning = ("hyper_parameters", "state_dict", "pytorch-lightning_version")
    missing = [key for key in lightning if key not in checkpoint]
    if missing or not isinstance(checkpoint["hyper_parameters"], dict) or not isinstance(checkpoint["state_dict"],
                                                                                          dict):
        what = f"no {', '.join(missing)}" if missing else "hyper_parameters or state_dict not a mapping"
        raise ModelError(f"{ckpt} is not a Lightning checkpoint of the distill module ({what}); give a .ckpt file "
                         "that `python -m distill fit` wrote (e.g. runs/teacher/checkpoints/last.ckpt).")
    class_path = checkpoint["hyper_parameters"].get("_class_path", "distill.module.Seq2SeqModule")
    if class_path not in MODULES:
        raise ModelError(f"{ckpt} was trained by {class_path}; this command converts only {sorted(MODULES)}.")
    # loaded through the class it names: Seq2SeqModule's loader would build a DistillModule's hparams as its own
    try:
        module = MODULES[class_path].load_from_checkpoint(ckpt, map_location="cpu", weights_only=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:  # hparams or weights of another module's shape
        reason = (str(err).strip().splitlines() or [""])[0][:200]
        raise ModelError(f"{ckpt} cannot be loaded as a {class_path.rsplit('.', 1)[-1]}: {type(err).__name__}: "
                         f"{reason}. It was written by another program or another version of this module.") from err
    callbacks = checkpoint.get("callbacks", {})
    best = {k: v.get("best_model_score") for k, v in callbacks.items() if isinstance(v, dict)}
    meta = {"checkpoint": str(ckpt), "global_step": checkpoint.get("global_step"), "epoch": checkpoint.get("epoch"),
            "best_scores": {k: float(v) for k, v in best.items() if v is not None},
            "command": "python -m distill.checkpoint " + " ".join(sys.argv[1:])}
    return module.save_pretrained(out, {"train_meta.json": meta})


def best_checkpoint(callback: ModelCheckpoint) -> tuple[str, float | None]:
    """The best checkpoint file of a `ModelCheckpoint` that monitors a metric, and its score.

    `last.ckpt` is written every N steps, before that step's validation. A run resumed from it (a finished run run
    again, or one killed between a new best and the next `last.ckpt`) remembers the best before that, whose file the
    top-k rule has since deleted. Each file the callback wrote records its own score, so the best of those on disk is
    found from them.
    """
    best = callback.best_model_path
    if not best or Path(best).is_file():
        return best, float(callback.best_model_score) if best and callback.best_model_score is not None else None
    prefix = (callback.filename or "").split("{")[0]
    scored = []
    for path in Path(callback.dirpath).glob(f"{prefix}*.ckpt"):
        if path.name.startswith(callback.CHECKPOINT_NAME_LAST):  # a copy of the latest step, not a scored one
            continue
        try:
            state = read_checkpoint(path).get("callbacks", {}).get(callback.state_key)
        except ModelError as err:  # a file cut short by a crash cannot be the best one to keep
            print(f"skipped {path}: {err}", file=sys.stderr)
            continue
        if state and state.get("current_score") is not None:
            scored.append((float(state["current_score"]), str(path)))
    if not scored:
        raise ModelError(f"The best checkpoint {best} is gone and {callback.dirpath} holds no other checkpoint of "
                         f"this run's {callback.monitor}; write a folder from another checkpoint with "
                         "`python -m distill.checkpoint --ckpt PATH --out DIR`.")
    score, path = (max if callback.mode == "max" else min)(scored)
    return path, score


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    with cli_errors("python -m distill.checkpoint"):
        check_output(args.out, inputs=(args.ckpt,))
        out = checkpoint_to_pretrained(args.ckpt, args.out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
