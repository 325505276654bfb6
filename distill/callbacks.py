"""Callbacks: weight digests for multi-process runs, a checkpoint that ranks only validations that generated."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint


class WeightsDigest(L.Callback):
    """At the end of fit, every rank writes `digest-rank{r}.json` with a sha256 of its trainable weights.

    Data-parallel replicas must end with identical weights; comparing the files shows it (the DDP test does).
    """

    def __init__(self, dirpath: str) -> None:
        self.dirpath = Path(dirpath)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, param in sorted(pl_module.named_parameters()):
            if param.requires_grad:
                digest.update(name.encode())
                digest.update(param.detach().float().cpu().numpy().tobytes())
        self.dirpath.mkdir(parents=True, exist_ok=True)
        info = {"rank": trainer.global_rank, "world_size": trainer.world_size, "global_step": trainer.global_step,
                "sha256": digest.hexdigest()}
        (self.dirpath / f"digest-rank{trainer.global_rank}.json").write_text(json.dumps(info) + "\n")


class GeneratedCheckpoint(ModelCheckpoint):
    """A ModelCheckpoint that ranks a step only when its validation generated (`model.val_generate_interval`).

    A validation that computes the loss alone logs no BLEU, and Lightning keeps the previous value in its metrics: a
    plain ModelCheckpoint would save that step as if it had scored the previous generation's BLEU.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if getattr(pl_module, "generates_now", True):
            super().on_validation_end(trainer, pl_module)
