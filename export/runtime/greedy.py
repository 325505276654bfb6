"""Greedy search, and multinomial sampling with do_sample: transformers' `_sample`, step for step, in numpy."""

from __future__ import annotations

from typing import Any, cast

import numpy as np

from export.runtime.columns import first_width, widened
from export.runtime.processors import is_eos, process_logits, softmax
from export.runtime.settings import Resolved
from export.runtime.steps import DecoderSteps


def greedy_search(decoder: DecoderSteps, hidden: Any, mask: np.ndarray, s: Resolved) -> np.ndarray:
    """One sequence per row of `hidden`: the most likely token at each step, or a drawn one with `s.do_sample`.

    Rows that end early are padded with pad_token_id after their EOS, as transformers does.
    """
    n = mask.shape[0]  # `hidden` may live on a device (IO binding): the mask has its rows
    rng = np.random.default_rng(s.seed)
    fill = 0 if s.pad is None else s.pad  # columns past the current length are never returned
    seqs = np.full((n, first_width(s.max_length)), fill, dtype=np.int64)  # filled column by column
    seqs[:, 0] = s.start
    cur_len = 1
    unfinished = np.ones(n, dtype=bool)
    logits, own, cross = decoder.first_step(seqs[:, :1], mask, hidden)
    while True:
        # each step's logits are its own until the next step (fresh arrays, or a bound buffer): processed in place
        scores = process_logits(logits.astype(np.float32, copy=False), seqs[:, :cur_len], s, beam=False)
        if s.do_sample:
            probs = softmax(scores.astype(np.float64))
            next_tokens = np.array([rng.choice(probs.shape[1], p=p) for p in probs], dtype=np.int64)
        else:
            next_tokens = np.argmax(scores, axis=-1)
        if s.eos.size:  # then pad is set: the first EOS id stands in for a missing pad_token_id (`resolve`)
            next_tokens = np.where(unfinished, next_tokens, cast(int, s.pad))
        if cur_len == seqs.shape[1]:
            seqs = widened(seqs, min(s.max_length, 2 * cur_len), fill)
        seqs[:, cur_len] = next_tokens
        cur_len += 1
        unfinished &= ~is_eos(next_tokens, s.eos)
        if cur_len >= s.max_length or not unfinished.any():
            return np.ascontiguousarray(seqs[:, :cur_len])
        logits, own = decoder.step(next_tokens[:, None], mask, own, cross)
