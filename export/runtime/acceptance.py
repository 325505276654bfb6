"""Speculative sampling's rule at one position (Leviathan et al. 2023, Chen et al. 2023), for every row at once.

The draft drew token d from its distribution q; the model's distribution there is p. Accepting d with probability
min(1, p(d) / q(d)) and, on a rejection, drawing from the residual max(0, p - q) (renormalized) gives a token
distributed exactly as p: P(x) = q(x) min(1, p(x)/q(x)) + (1 - sum_y min(p(y), q(y))) (p(x) - q(x))+ / Z = p(x),
as Z = sum_y (p(y) - q(y))+ = 1 - sum_y min(p(y), q(y)).
"""

from __future__ import annotations

import numpy as np


def sample_rows(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One token per row of `probs` (N, vocabulary), rows proportional to their weights (they need not sum to 1).

    Inverse transform on the cumulative sums: one uniform draw per row, vectorized (numpy's `choice` takes one row
    at a time). A token of weight 0 is never drawn.
    """
    cum = np.cumsum(probs, axis=1)
    u = rng.random(probs.shape[0]) * cum[:, -1]
    return np.minimum((cum <= u[:, None]).sum(axis=1), probs.shape[1] - 1).astype(np.int64)


def speculative_choice(p: np.ndarray, q: np.ndarray, drafts: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(accepted (N,) bool, token (N,) int64) at one position: the draft token where accepted, else a residual draw.

    `p`, `q`: the model's and the draft's probabilities (N, vocabulary) after the same logits processing; `drafts`
    (N,) were drawn from `q`, so q(d) > 0.
    """
    rows = np.arange(drafts.shape[0])
    u = rng.random(drafts.shape[0])
    accepted = u * q[rows, drafts] < p[rows, drafts]  # u < p(d) / q(d), without dividing
    tokens = drafts.astype(np.int64, copy=True)
    rejected = np.flatnonzero(~accepted)
    if rejected.size:
        residual = np.maximum(p[rejected] - q[rejected], 0.0)
        # p == q leaves no residual, and then a rejection has probability 0: only rounding gets here; draw from p
        empty = residual.sum(axis=1) <= 0
        residual[empty] = p[rejected][empty]
        tokens[rejected] = sample_rows(residual, rng)
    return accepted, tokens
