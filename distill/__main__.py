"""Train or fine-tune a T5 with Lightning, configured by YAML (LightningCLI).

    python -m distill fit --config configs/train/teacher.yaml --ckpt_path last          # make teacher
    python -m distill fit --config configs/distill/pseudo-mixed-6-3.yaml --ckpt_path last   # make distill
    python -m distill fit --config configs/train/teacher.yaml --print_config       # every option, with its value

`--ckpt_path last` resumes from the last checkpoint when there is one (a fresh run otherwise). After `fit`, the best
checkpoint (by the validation metric) is written to `--out` as a `save_pretrained` folder with the tokenizer and a
`train_meta.json` (best validation metrics, step, checkpoint, config).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from distill.checkpoint import best_checkpoint, read_checkpoint
from distill.datamodule import Seq2SeqDataModule
from distill.errors import UserError, cli_errors
from distill.files import check_output
from distill.module import Seq2SeqModule


class CLI(LightningCLI):
    """LightningCLI with the tokenizer and task prefix given once (under `data`) and `--out` written after fit."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("data.tokenizer", "model.init_args.tokenizer")
        parser.link_arguments("data.task_prefix", "model.init_args.task_prefix")
        parser.add_argument("--out", type=Path | None, default=None,
                            help="save_pretrained folder written from the best checkpoint after fit")

    def before_instantiate_classes(self) -> None:
        """A section that must be a mapping but is not (jsonargparse passes `trainer: [1, 2]` through unchecked) is
        named here, instead of failing inside Lightning."""
        config = self.config[self.subcommand] if self.subcommand else self.config
        for key in ("trainer", "data", "model"):
            value = config.get(key)
            if value is not None and not isinstance(value, Namespace | dict):
                raise UserError(f"`{key}` in the config must be a mapping of settings (e.g. `trainer: "
                                f"{{max_steps: 100}}`), not {type(value).__name__} {value!r:.60}; fix that section of "
                                "the YAML file.")

    def before_fit(self) -> None:
        config = self.config[self.subcommand]
        out = config.get("out")
        if out is not None:  # before training: the folder written after fit must not be refused only then
            model_args = (config.get("model") or {}).get("init_args") or {}
            inputs = [(config.get("data") or {}).get(key) for key in ("path", "tokenizer")]
            inputs += [model_args.get(key) for key in ("model", "teacher", "student")]
            check_output(out, inputs=[p for p in inputs if isinstance(p, str | Path)])

    def fit(self, model: Seq2SeqModule, **kwargs: Any) -> None:
        """`trainer.fit`, with a checkpoint to resume from that cannot be read reported as a ModelError naming it."""
        try:
            self.trainer.fit(model, **kwargs)
        except Exception:
            resumed = self.trainer.ckpt_path  # set before Lightning reads the file
            if resumed:
                read_checkpoint(resumed)  # raises the ModelError when the file is the problem
            raise

    def after_fit(self) -> None:
        out = self.config[self.subcommand].get("out")
        if out is None or self.trainer.global_rank != 0:
            return
        callback = self.trainer.checkpoint_callback
        best, score = best_checkpoint(callback) if callback is not None else ("", None)
        module: Seq2SeqModule = self.model
        if best:
            state = read_checkpoint(best)["state_dict"]
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


def main(args: list[str] | None = None) -> None:
    # subclass mode: a config names its module, `distill.module.Seq2SeqModule` (training, fine-tuning) or
    # `distill.distillation.DistillModule` (students), under `model.class_path`
    # the datamodule shards training batches by rank itself (TokenBatchSampler): Lightning must not swap in its own
    with cli_errors("python -m distill"):
        try:
            CLI(Seq2SeqModule, Seq2SeqDataModule, subclass_mode_model=True, seed_everything_default=1234,
                trainer_defaults={"use_distributed_sampler": False}, save_config_kwargs={"overwrite": True}, args=args)
        except ValueError as err:
            user_error = _user_error(err)
            if user_error is None:
                raise
            raise user_error from None


def _user_error(err: BaseException | None) -> UserError | None:
    """The UserError behind `err`, if any. jsonargparse builds the module as one type of a Union and re-raises a
    failure as a ValueError caused by it, so a ModelError of the module's constructor arrives wrapped."""
    while err is not None:
        if isinstance(err, UserError):
            return err
        err = err.__cause__
    return None


if __name__ == "__main__":
    main()
