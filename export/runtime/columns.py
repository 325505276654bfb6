"""Sequence buffers that grow with what is generated, not with max_length.

The decoding loops write one column per step. Allocating max_length columns up front would make `max_new_tokens`
cost memory (and, in beam search, time per step) even when every sequence ends at its first EOS; so the buffers start
with FIRST_COLUMNS columns and double, up to max_length, when a step needs the next column.
"""

from __future__ import annotations

import numpy as np

FIRST_COLUMNS = 64


def first_width(max_length: int) -> int:
    """How many columns a sequence buffer starts with."""
    return min(max_length, FIRST_COLUMNS)


def widened(a: np.ndarray, width: int, fill: int) -> np.ndarray:
    """`a` with its last axis grown to `width` columns, the new ones set to `fill`."""
    grown = np.full((*a.shape[:-1], width), fill, dtype=a.dtype)
    grown[..., :a.shape[-1]] = a
    return grown
