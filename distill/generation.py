"""Batched generation over a list of tokenized sources: the one helper that scoring, pseudo-labels and the evaluation
harness share, whatever runs the model (transformers' `generate`, OnnxT5, another engine).

Sources are sorted by length and cut into batches (by rows, by padded tokens, or both), so that little padding is
computed; the texts come back in input order.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

import numpy as np

# generate(input_ids (B, L) int64, attention_mask (B, L) int64) -> token ids (N, length) int64, as transformers returns
Generate = Callable[[np.ndarray, np.ndarray], np.ndarray]
Decode = Callable[[list[list[int]]], list[str]]


def length_batches(lengths: Sequence[int], max_rows: int | None = None, max_tokens: int | None = None,
                   num_beams: int = 1) -> list[list[int]]:
    """Indices sorted by length (stable), cut into batches of at most `max_rows` rows and, with `max_tokens`, at most
    that many padded tokens times beams (a single longer row still makes a batch of its own)."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        too_many = max_rows is not None and len(batch) >= max_rows
        too_long = max_tokens is not None and lengths[i] * (len(batch) + 1) * max(1, num_beams) > max_tokens
        if batch and (too_many or too_long):
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded ids and their attention mask, both (B, longest) int64."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, :len(r)], mask[i, :len(r)] = r, 1
    return ids, mask


def generate_texts(generate: Generate, decode: Decode, sources: Sequence[Sequence[int]], pad_id: int,
                   max_rows: int | None = None, max_tokens: int | None = None, num_beams: int = 1,
                   progress: bool = False) -> list[str]:
    """Decoded outputs of `generate` for tokenized `sources`, in input order (see `length_batches` for the batching)."""
    batches = length_batches([len(s) for s in sources], max_rows, max_tokens, num_beams)
    outputs = [""] * len(sources)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="generating", file=sys.stderr)
    for batch in batches:
        ids, mask = pad_batch([sources[i] for i in batch], pad_id)
        texts = decode(np.asarray(generate(ids, mask)).tolist())
        for i, text in zip(batch, texts, strict=True):
            outputs[i] = text
    return outputs
