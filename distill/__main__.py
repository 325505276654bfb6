"""Train or fine-tune a T5 with Lightning, configured by YAML (LightningCLI).

    python -m distill fit --config configs/teacher.yaml --ckpt_path last          # make teacher
    python -m distill fit --config configs/distill/sft.yaml --ckpt_path last      # make distill
    python -m distill fit --config configs/teacher.yaml --print_config       # every option, with its value

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
        best = callback.best_model_path if callback is not None else ""
        module: Seq2SeqModule = self.model
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        metrics = {k: float(v) for k, v in self.trainer.callback_metrics.items() if k.startswith("val_")}
        meta = {
            "best_checkpoint": os.path.relpath(best) if best else None,  # no machine-specific prefix in the folder
            "best_score": float(callback.best_model_score) if best and callback.best_model_score is not None else None,
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
    CLI(Seq2SeqModule, Seq2SeqDataModule, subclass_mode_model=True, seed_everything_default=1234,
        trainer_defaults={"use_distributed_sampler": False}, save_config_kwargs={"overwrite": True}, args=args)


if __name__ == "__main__":
    main()
