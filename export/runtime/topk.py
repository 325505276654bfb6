"""The k largest scores of each row, found without sorting the whole row: beam search's candidate selection."""

from __future__ import annotations

import numpy as np


def topk(x: np.ndarray, k: int, block: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Largest k along the last axis of a 2-D array, in descending order (ties: lowest index first).

    Beam search calls this on batch x (beams * vocabulary) scores every step, where a full sort and even a partition
    cost more than the int8 decoder step. So the rows are cut into blocks of `block` and only the blocks whose maximum
    reaches the k-th largest block maximum are searched: every one of the k largest values lies in such a block (the
    k-th largest value is at least the k-th largest block maximum).
    """
    rows, n = x.shape
    if k * block * 4 > n:
        idx = np.argsort(-x, axis=-1, kind="stable")[:, :k]
        return np.take_along_axis(x, idx, axis=-1), idx
    full = n - n % block
    block_max = x[:, :full].reshape(rows, -1, block).max(axis=-1)
    if full < n:
        block_max = np.concatenate([block_max, x[:, full:].max(axis=-1, keepdims=True)], axis=1)
    nb = block_max.shape[1]
    cutoff = np.partition(block_max, nb - k, axis=-1)[:, nb - k]
    offsets = np.arange(block)
    idx = np.empty((rows, k), dtype=np.int64)
    for row in range(rows):
        blocks = np.flatnonzero(block_max[row] >= cutoff[row])
        candidates = (blocks[:, None] * block + offsets).ravel()  # ascending: stable sorts keep ties in index order
        candidates = candidates[candidates < n]
        values = x[row, candidates]
        if candidates.size > k:
            kth = np.partition(values, candidates.size - k)[candidates.size - k]
            keep = values >= kth
            candidates, values = candidates[keep], values[keep]
        idx[row] = candidates[np.argsort(-values, kind="stable")[:k]]
    return np.take_along_axis(x, idx, axis=-1), idx
