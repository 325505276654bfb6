"""Callbacks for multi-process runs."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L


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
