"""Where a training step's time goes: a callback timing each part of the steps and validations of a fit.

    python -m bench.step_profile --config configs/distill/sft.yaml --config configs/distill/sft-cached.yaml

Parts of a step: `between_steps` (from the end of one step to the start of the next: fetching and collating the
batch, logging and checkpoint writing), the student's `encoder`, `decoder` and `lm_head` forwards and the `teacher`'s
(forward hooks), `forward_other` (the rest of the forward: losses, cache reads), `backward`, and `optimizer`
(clipping, the step, zero_grad, the scheduler). Validation: its whole time, and the part spent generating. The first
`skip` steps (allocation, first-call costs) are left out. On CUDA every mark synchronizes the device, which slows
the run a little but puts each part's time where it belongs.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch

STEP_PARTS = ("between_steps", "encoder", "decoder", "lm_head", "teacher", "forward_other", "backward", "optimizer")
HOOKED = ("encoder", "decoder", "lm_head", "teacher")


class StepProfile(L.Callback):
    """Times the parts of each training step and of each validation; writes the means to `path` (JSON) at the end."""

    def __init__(self, path: str, skip: int = 2) -> None:
        self.path, self.skip = Path(path), skip
        self.totals: dict[str, float] = defaultdict(float)
        self.steps = self.seen = self.validations = 0
        self._marks: dict[str, float] = {}
        self._in_step = False
        self._last_end: float | None = None
        self._step_hooked: dict[str, float] = defaultdict(float)
        self._generate_seconds = 0.0

    def _now(self) -> float:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        return time.perf_counter()

    def _hook(self, part: str, module: torch.nn.Module) -> None:
        def before(*_: Any) -> None:
            if self._in_step:
                self._marks[part] = self._now()

        def after(*_: Any) -> None:
            if self._in_step and part in self._marks:
                self._step_hooked[part] += self._now() - self._marks.pop(part)

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model
        for part in ("encoder", "decoder", "lm_head"):
            self._hook(part, getattr(model, part))
        teacher = getattr(pl_module, "teacher", None)
        if teacher is not None:  # the hidden-state loss runs the teacher's stacks without its forward
            for name in ("encoder", "decoder", "lm_head"):
                self._hook("teacher", getattr(teacher, name))
        generate: Callable[..., Any] = pl_module.generate

        def timed_generate(*args: Any, **kwargs: Any) -> Any:
            start = self._now()
            try:
                return generate(*args, **kwargs)
            finally:
                self._generate_seconds += self._now() - start

        pl_module.generate = timed_generate  # an instance attribute: the class's method is left as it is

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = self._now()
        self._step = {"between_steps": now - self._last_end} if self._last_end is not None else {}
        self._step_hooked.clear()
        self._marks = {"start": now}
        self._in_step = True

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        now = self._now()
        forward = now - self._marks["start"]
        self._step.update(self._step_hooked)
        self._step["forward_other"] = forward - sum(self._step_hooked.values())
        self._marks["backward"] = now
        self._in_step = False  # forwards from here on (none expected) are not the step's

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._step["backward"] = self._now() - self._marks["backward"]

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule,
                                 optimizer: torch.optim.Optimizer) -> None:
        self._marks["optimizer"] = self._now()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        now = self._now()
        self._in_step = False
        if "optimizer" in self._marks:
            self._step["optimizer"] = now - self._marks["optimizer"]
        self._last_end = now
        self.seen += 1
        if self.seen > self.skip and "between_steps" in self._step:
            self.steps += 1
            for part, seconds in self._step.items():
                self.totals[part] += seconds

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._marks["validation"] = self._now()
        self._generate_seconds = 0.0

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = None  # the gap after a validation is not a step's
        if trainer.sanity_checking:
            return
        self.validations += 1
        self.totals["validation"] += self._now() - self._marks["validation"]
        self.totals["validation_generate"] += self._generate_seconds

    def summary(self) -> dict:
        """Mean milliseconds per step of each part, steps per second, and seconds per validation."""
        steps = max(1, self.steps)
        parts = {part: round(1000 * self.totals[part] / steps, 1) for part in STEP_PARTS}
        step_ms = sum(parts.values())
        validations = max(1, self.validations)
        return {"steps_timed": self.steps, "step_ms": round(step_ms, 1),
                "steps_per_s": round(1000 / step_ms, 3) if step_ms else None, "parts_ms": parts,
                "parts_share": {p: round(v / step_ms, 3) if step_ms else None for p, v in parts.items()},
                "validations": self.validations,
                "validation_s": round(self.totals["validation"] / validations, 2),
                "validation_generate_s": round(self.totals["validation_generate"] / validations, 2)}

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_rank == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.summary(), indent=2) + "\n")
