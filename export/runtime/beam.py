"""Beam search (and beam sampling with do_sample): transformers 5.x `_beam_search`, vectorized form, step for step.

The beams of an input share its encoder side: the mask and the cross-attention K/V keep one row per input, which the
decoder with past reads for all of that input's beams; only the self-attention cache has a row per beam.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from export.runtime.columns import first_width, widened
from export.runtime.processors import process_logits, softmax
from export.runtime.settings import Resolved
from export.runtime.steps import DecoderSteps
from export.runtime.topk import topk

NEG = np.float32(-1.0e9)  # transformers' beam search marks impossible candidates with -1e9, in float32


def beam_search(decoder: DecoderSteps, hidden: Any, mask: np.ndarray, s: Resolved,
                log_softmax: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`s.num_return_sequences` best beams per input, laid out as transformers returns them; arrays are
    (batch, beams, ...). Beams that end early are filled with pad_token_id, or with the first EOS id when the pad id
    is 0 (transformers 5.x). `log_softmax`: (rows, vocabulary) logits -> a new float32 array of their
    log-softmax (onnxruntime's: `log_softmax.py`)."""
    batch, beams, max_length = mask.shape[0], s.num_beams, s.max_length
    rng = np.random.default_rng(s.seed)
    fill = (s.pad or int(s.eos[0])) if s.eos.size else -1  # transformers 5.x: `pad or eos[0]`: EOS when pad is 0
    running = np.full((batch, beams, first_width(max_length)), fill, dtype=np.int64)  # grows with cur_len
    running[:, :, 0] = s.start
    sequences = running.copy()
    running_scores = np.zeros((batch, beams), dtype=np.float32)
    running_scores[:, 1:] = NEG  # only the first beam's continuations count at the first step
    beam_scores = np.full((batch, beams), NEG, dtype=np.float32)
    finished = np.zeros((batch, beams), dtype=bool)
    improvable = np.ones((batch, 1), dtype=bool)  # the early-stop heuristic is not yet satisfied
    running_idx = np.full((batch, beams, running.shape[2] - 1), -1, dtype=np.int64)
    beam_idx_out = running_idx.copy()
    offsets = np.arange(batch)[:, None] * beams

    logits, own, cross = decoder.first_step(np.full((batch, 1), s.start, dtype=np.int64), mask, hidden)
    # candidates kept per step, so that `beams` unfinished ones remain; at most all of them (transformers' top-k
    # fails when EOS ids are so many that this exceeds beams * vocabulary)
    keep = min(max(2, 1 + s.eos.size) * beams, beams * logits.shape[-1])
    top_beam_mask = np.arange(keep) < beams
    logits, own = np.repeat(logits, beams, axis=0), decoder.take_rows(own, np.repeat(np.arange(batch), beams))
    cur_len = 1
    while True:
        if cur_len == running.shape[2]:  # the next column is past the buffers' end: widen all four alike
            width = min(max_length, 2 * cur_len)
            running, sequences = widened(running, width, fill), widened(sequences, width, fill)
            running_idx, beam_idx_out = widened(running_idx, width - 1, -1), widened(beam_idx_out, width - 1, -1)
        vocab = logits.shape[-1]
        top_lp, top_idx = _candidates(logits, running[:, :, :cur_len], running_scores, s, keep, rng, log_softmax)
        from_beam = top_idx // vocab
        top_seqs = np.take_along_axis(running, from_beam[:, :, None], axis=1)
        top_seqs[:, :, cur_len] = top_idx % vocab
        top_running_idx = np.take_along_axis(running_idx, from_beam[:, :, None], axis=1)
        top_running_idx[:, :, cur_len - 1] = from_beam + offsets

        # which candidates stop: max length reached, or EOS
        hits = np.isin(top_seqs[:, :, cur_len], s.eos) | (cur_len + 1 >= max_length)

        # the best `beams` unfinished candidates run on
        top_running_lp = (top_lp + hits.astype(np.float32) * NEG).astype(np.float32)
        _, nxt = topk(top_running_lp, beams)
        running = np.take_along_axis(top_seqs, nxt[:, :, None], axis=1)
        running_scores = np.take_along_axis(top_running_lp, nxt, axis=1)
        running_idx = np.take_along_axis(top_running_idx, nxt[:, :, None], axis=1)

        # finished candidates among the top `beams` join the finished set if they beat it
        just_finished = hits & top_beam_mask[None, :]
        final_lp = (top_lp / np.float32((cur_len + 1 - 1) ** s.length_penalty)).astype(np.float32)
        full = np.all(finished, axis=-1, keepdims=True) & (s.early_stopping is True)
        final_lp = final_lp + full.astype(np.float32) * NEG
        final_lp = final_lp + (~improvable).astype(np.float32) * NEG
        final_lp = (final_lp + (~just_finished).astype(np.float32) * NEG).astype(np.float32)
        merged_scores = np.concatenate([beam_scores, final_lp], axis=1)
        _, best = topk(merged_scores, beams)
        sequences = np.take_along_axis(np.concatenate([sequences, top_seqs], axis=1), best[:, :, None], axis=1)
        beam_scores = np.take_along_axis(merged_scores, best, axis=1)
        beam_idx_out = np.take_along_axis(np.concatenate([beam_idx_out, top_running_idx], axis=1),
                                          best[:, :, None], axis=1)
        finished = np.take_along_axis(np.concatenate([finished, just_finished], axis=1), best, axis=1)

        cur_len += 1
        # early-stop heuristic: can a running beam still beat the worst finished one?
        never = s.early_stopping == "never" and s.length_penalty > 0.0  # then assume the longest possible beam
        best_len = max_length - 1 if never else cur_len - 1
        best_possible = running_scores[:, :1] / np.float32(best_len ** s.length_penalty)
        worst = np.where(finished, np.min(beam_scores, axis=1, keepdims=True), NEG)
        improvable = improvable & np.any(best_possible > worst, axis=-1, keepdims=True)
        open_beam = not (np.all(finished) and s.early_stopping is True)
        if not (np.any(improvable) and open_beam and not np.all(hits)):
            break
        order = running_idx[:, :, cur_len - 2].reshape(-1)  # the beam each running sequence continues
        if not np.array_equal(order, np.arange(order.size)):  # every beam continuing itself: nothing to move
            own = decoder.take_rows(own, order)
        logits, own = decoder.step(running[:, :, cur_len - 1].reshape(-1, 1), mask, own, cross)

    n_ret = s.num_return_sequences
    returned = sequences[:, :n_ret].reshape(batch * n_ret, -1)
    generated = int(np.max(np.sum(beam_idx_out[:, :n_ret].reshape(batch * n_ret, -1) != -1, axis=1)))
    return returned[:, :1 + generated]


def _candidates(logits: np.ndarray, running: np.ndarray, running_scores: np.ndarray, s: Resolved, keep: int,
                rng: np.random.Generator, log_softmax: Callable[[np.ndarray], np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray]:
    """The `keep` continuations of each input's beams (batch, keep): log-probabilities after processing plus the beam
    scores, and their indices into beams x vocabulary; the best, or sampled without replacement with do_sample, in
    descending order. `running`: the (batch, beams, length) sequences so far; `logits` as the step returned them
    (`log_softmax` makes float32 of them)."""
    batch, beams, cur_len = running.shape
    vocab = logits.shape[-1]
    log_probs = process_logits(log_softmax(logits), running.reshape(batch * beams, cur_len), s, beam=True)
    log_probs = log_probs.reshape(batch, beams, vocab)
    log_probs += running_scores[:, :, None]  # in place: log_softmax's output is a new array
    log_probs = log_probs.reshape(batch, -1)
    if not s.do_sample:
        return topk(log_probs, keep)
    probs = softmax(log_probs.astype(np.float64))
    left = int(np.min(np.count_nonzero(probs, axis=1)))
    if left < keep:  # transformers' torch.multinomial fails here too
        raise ValueError(f"OnnxT5.generate: beam sampling draws {keep} candidates per step without "
                         f"replacement, but top_k/top_p and the other settings left {left} tokens with a "
                         "non-zero probability: raise top_p (or top_k), or use fewer beams.")
    top_idx = np.stack([rng.choice(p.size, size=keep, replace=False, p=p) for p in probs])
    top_lp = np.take_along_axis(log_probs, top_idx, axis=1)
    order = np.argsort(-top_lp, axis=1, kind="stable")
    return np.take_along_axis(top_lp, order, 1), np.take_along_axis(top_idx, order, 1)
