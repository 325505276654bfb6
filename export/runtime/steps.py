"""What the decoding loops need from a model: the first decoder step, each step after it on the cache, and the cache's
rows taken by beam.

The hidden states and K/V are whatever the model keeps them as: numpy arrays (`OnnxT5`), `OrtValue`s on the
provider's device (`export.runtime.binding.BoundSteps`), or one call's buffers and index
(`export.runtime.shared_cache.Cache`); the loops only pass them back. Logits are numpy.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class DecoderSteps(Protocol):
    def first_step(self, tokens: np.ndarray, mask: np.ndarray,
                   hidden: Any) -> tuple[np.ndarray, Any, list[Any]]:
        """Last-position logits (N, vocabulary), the self-attention K/V and the cross-attention K/V per layer."""
        ...

    def step(self, tokens: np.ndarray, mask: np.ndarray, own: Any,
             cross: list[Any]) -> tuple[np.ndarray, Any]:
        """One token per sequence on top of the cache: its logits and the self-attention K/V grown by one position."""
        ...

    def take_rows(self, tensors: Any, rows: np.ndarray) -> Any:
        """Each tensor with row `rows[i]` as its row i (beam search's reorder; `rows` int64)."""
        ...
