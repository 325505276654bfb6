"""Train or fine-tune a T5 with Lightning, configured by YAML (LightningCLI).

    python -m distill fit --config configs/train/teacher.yaml --ckpt_path last          # make teacher
    python -m distill fit --config configs/distill/sft.yaml --ckpt_path last      # make distill
    python -m distill fit --config configs/train/teacher.yaml --print_config       # every option, with its value

`--ckpt_path last` resumes from the last checkpoint when there is one (a fresh run otherwise). After `fit`, the best
checkpoint (by the validation metric) is written to `--out` as a `save_pretrained` folder with the tokenizer and a
`train_meta.json` (best validation metrics, step, checkpoint, config).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from lightning.pytorch.cli import LightningCLI

from distill.data import Seq2SeqDataModule
from distill.module import Seq2SeqModule


class CLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.tokenizer", "model.init_args.tokenizer")
        parser.link_arguments("data.task_prefix", "model.init_args.task_prefix")
        parser.add_argument("--out", type=Path | None, default=None,
                            help="save_pretrained folder written from the best checkpoint after fit")

    def after_fit(self) -> None:
        out = self.config[self.subcommand].get("out")
        if out is None or self.trainer.global_rank != 0:
            return
        callback = self.trainer.checkpoint_callback
        best, score = best_checkpoint(callback) if callback is not None else ("", None)
        module: Seq2SeqModule = self.model
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val_")}
        meta = {
            "best_checkpoint": os.path.relpath(best) if best else None,  # no machine-specific prefix in the folder
            "best_score": score if best else None,
            "monitor": callback.monitor if callback is not None else None,
            "global_step": self.trainer.global_step,
            "last_validation": metrics,
            "command": "python -m " + " ".join(["distill", *sys.argv[1:]]),
        }
        module.save_pretrained(Path(out), {"train_meta.json": meta})
        print(f"wrote {out} from {best or 'the final weights'}")


def best_checkpoint(callback) -> tuple[str, float | None]:
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
        state = torch.load(path, map_location="cpu", weights_only=True).get("callbacks", {}).get(callback.state_key)
        if state and state.get("current_score") is not None:
            scored.append((float(state["current_score"]), str(path)))
    if not scored:
        raise SystemExit(f"The best checkpoint {best} is gone and {callback.dirpath} holds no other checkpoint of "
                         f"this run's {callback.monitor}; write a folder from another checkpoint with "
                         "`python -m distill.checkpoint --ckpt PATH --out DIR`.")
    score, path = (max if callback.mode == "max" else min)(scored)
    return path, score


def main(args: list[str] | None = None) -> None:
    # subclass mode: a config names its module, `distill.module.Seq2SeqModule` (training, fine-tuning) or
    # `distill.distillation.DistillModule` (students), under `model.class_path`
    # the datamodule shards training batches by rank itself (TokenBatchSampler): Lightning must not swap in its own
    CLI(Seq2SeqModule, Seq2SeqDataModule, subclass_mode_model=True, seed_everything_default=1234,
        trainer_defaults={"use_distributed_sampler": False}, save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
