"""The k largest scores of each row, found without sorting the whole row: beam search's candidate selection."""

from __future__ import annotations

import math

import numpy as np

from export.runtime.rows import rows_of


def group_size(n: int) -> int:
    """Columns per group for rows of n scores: sqrt(n) / 3 rounded to a power of two, at least 32. The group maxima
    run faster over fewer, longer groups, the search inside the chosen groups over shorter ones; this rule picked
    the fastest size of 32-512, or the next to it, for 4 beams over vocabularies of 2,000 to 250,112 at 1-32 rows
    (docs/results.md, "Beam search's top-k: the group size by the row's length")."""
    return 1 << max(5, round(math.log2(math.sqrt(n) / 3))) if n > 0 else 32


def topk(x: np.ndarray, k: int, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Largest k along the last axis of a 2-D array, in descending order (ties: lowest index first).

    Beam search calls this on batch x (beams * vocabulary) scores every step, where a full sort and even a partition
    cost more than the int8 decoder step. So the rows are cut into groups of `block` columns (default `group_size`) and
    only the groups whose maximum reaches the k-th largest group maximum are searched: every one of the k largest
    values lies in such a group (the k-th largest value is at least the k-th largest group maximum).

    A group is strided, not contiguous: with n = block * groups (+ a tail, one more group), group j holds the columns
    j, j + groups, j + 2 * groups, ... So the group maxima are an element-wise maximum of `block` contiguous slices of
    the row, which numpy vectorizes, where the maximum of each contiguous run of `block` is a reduction along a short
    inner axis, several times slower at batch 32 x beam 4 (docs/architecture.md, "Top-k by strided groups").
    """
    rows, n = x.shape
    block = block or group_size(n)
    groups = n // block
    if k * 4 > groups:
        idx = np.argsort(-x, axis=-1, kind="stable")[:, :k]
        return rows_of(x, idx), idx
    full = block * groups
    group_max = x[:, :full].reshape(rows, block, groups).max(axis=1)
    if full < n:
        group_max = np.concatenate([group_max, x[:, full:].max(axis=-1, keepdims=True)], axis=1)
    cutoff = np.partition(group_max, group_max.shape[1] - k, axis=-1)[:, group_max.shape[1] - k]
    strides = np.arange(block) * groups
    tail = np.arange(full, n)
    idx = np.empty((rows, k), dtype=np.int64)
    for row in range(rows):
        chosen = np.flatnonzero(group_max[row] >= cutoff[row])
        # ascending column order (stride-major, then group), so that stable sorts keep ties in index order
        candidates = (strides[:, None] + chosen[chosen < groups][None, :]).ravel()
        if chosen[-1] == groups:  # the tail group
            candidates = np.concatenate([candidates, tail])
        values = x[row, candidates]
        if candidates.size > k:
            kth = np.partition(values, candidates.size - k)[candidates.size - k]
            keep = values >= kth
            candidates, values = candidates[keep], values[keep]
        idx[row] = candidates[np.argsort(-values, kind="stable")[:k]]
    return rows_of(x, idx), idx
