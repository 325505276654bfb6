"""transformers' logits processors and warpers, in transformers' order, on numpy scores; softmax.

Scores are (N, vocabulary) float32, sequences (N, current length) int64.
"""

from __future__ import annotations

import numpy as np

from export.runtime.settings import Resolved


def process_logits(scores: np.ndarray, seqs: np.ndarray, s: Resolved, beam: bool) -> np.ndarray:
    """Repetition penalty, no-repeat n-grams, minimum length, then (sampling) temperature, top-k and top-p.

    May change `scores` in place. `beam`: beam search keeps one candidate per EOS id more through top-k and top-p.
    """
    cur_len = seqs.shape[1]
    if s.repetition_penalty != 1.0:
        seen = np.take_along_axis(scores, seqs, axis=1)
        seen = np.where(seen < 0, seen * np.float32(s.repetition_penalty), seen / np.float32(s.repetition_penalty))
        np.put_along_axis(scores, seqs, seen.astype(np.float32), axis=1)
    n = s.no_repeat_ngram_size
    if n > 0 and cur_len >= n:
        windows = np.lib.stride_tricks.sliding_window_view(seqs, n, axis=1)  # (N, cur_len - n + 1, n)
        prefix = seqs[:, cur_len + 1 - n:]
        matches = np.all(windows[..., :-1] == prefix[:, None, :], axis=-1)
        rows, cols = np.nonzero(matches)
        banned = windows[rows, cols, -1]
        keep = banned < scores.shape[1]
        scores[rows[keep], banned[keep]] = -np.inf
    if s.eos.size and cur_len < s.min_length:
        scores[:, s.eos[s.eos < scores.shape[1]]] = -np.inf
    if s.do_sample:
        min_keep = s.eos.size + 1 if beam else 1
        if s.temperature != 1.0:
            scores = scores / np.float32(s.temperature)
        if s.top_k != 0:
            k = min(max(s.top_k, min_keep), scores.shape[1])
            kth = np.partition(scores, scores.shape[1] - k, axis=1)[:, scores.shape[1] - k][:, None]
            scores = np.where(scores < kth, np.float32(-np.inf), scores)
        if s.top_p < 1.0:
            order = np.argsort(scores, axis=1, kind="stable")  # ascending
            sorted_scores = np.take_along_axis(scores, order, axis=1)
            cum = np.cumsum(softmax(sorted_scores), axis=1)
            remove = cum <= (1 - s.top_p)
            remove[:, -min_keep:] = False
            mask = np.zeros_like(remove)
            np.put_along_axis(mask, order, remove, axis=1)
            scores = np.where(mask, np.float32(-np.inf), scores)
    return scores


def is_eos(tokens: np.ndarray, eos: np.ndarray) -> np.ndarray:
    """Whether each token is one of the EOS ids: one comparison for the usual single id, where `np.isin` sorts and
    searches (about 9 us a call, once per step)."""
    return tokens == eos[0] if eos.size == 1 else np.isin(tokens, eos)


def softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis."""
    z = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return z / np.sum(z, axis=-1, keepdims=True)

