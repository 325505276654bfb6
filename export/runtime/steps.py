"""What the decoding loops need from a model: the first decoder step, and each step after it on the cache."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class DecoderSteps(Protocol):
    def first_step(self, tokens: np.ndarray, mask: np.ndarray,
                   hidden: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
        """Last-position logits (N, vocabulary), the self-attention K/V and the cross-attention K/V per layer."""
        ...

    def step(self, tokens: np.ndarray, mask: np.ndarray, own: list[np.ndarray],
             cross: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        """One token per sequence on top of the cache: its logits and the self-attention K/V grown by one position."""
        ...
