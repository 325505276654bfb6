"""The learning-rate schedule of training: linear warm-up, then linear, cosine or inverse-square-root decay."""

from __future__ import annotations

import math


def lr_lambda(step: int, warmup_steps: int, total_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier of the peak learning rate: linear warm-up, then linear, cosine or inverse-sqrt decay."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "inverse_sqrt":
        return max(min_ratio, math.sqrt(max(1, warmup_steps) / (step + 1)))
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * decay
