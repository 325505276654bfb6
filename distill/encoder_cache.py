"""The frozen encoder's outputs for every training source, computed once and read back instead of running it.

With `freeze_encoder` and `freeze_embeddings`, the encoder (and the embedding it reads) never changes, so its output
for a training source is the same at every step and every epoch: `DistillModule(encoder_cache=FOLDER)` computes it
once, in eval mode, stores it in float16 or bfloat16 (`distill.example_cache`), and feeds it to the decoder as
`encoder_outputs`. The cache is tied to the sha256 of the encoder's weights (embedding included), of the tokenized
sources and of its dtype: change any and it is rebuilt. It holds each distinct source once, in order of first
appearance: a dataset that repeats its sources (gold and pseudo-label targets mixed) shares the cache of the dataset
without repeats, and so does every recipe whose student has the teacher's encoder.

What differs from running the encoder: no dropout inside the frozen encoder (the cached outputs are its eval-mode
outputs), and the rounding of the stored dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from distill.batching import collate
from distill.errors import ModelError
from distill.example_cache import ExampleCache, build_cache, ids_sha256, weights_sha256

if TYPE_CHECKING:
    from transformers import T5ForConditionalGeneration

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


class EncoderOutputs:
    """The cached outputs of a dataset's examples: `batch(indices, length)` (B, length, d_model), zero-padded."""

    def __init__(self, cache: ExampleCache, rows: list[int]) -> None:
        self.cache, self.rows = cache, rows  # rows[i]: the cache row of example i's source

    def batch(self, indices: Sequence[int], length: int) -> torch.Tensor:
        return self.cache.batch([self.rows[i] for i in indices], length, {})["hidden"]


def distinct_sources(sources: Sequence[Sequence[int]]) -> tuple[list[Sequence[int]], list[int]]:
    """The distinct sources in order of first appearance, and each example's position among them."""
    position: dict[tuple[int, ...], int] = {}
    rows = [position.setdefault(tuple(ids), len(position)) for ids in sources]
    distinct = [None] * len(position)
    for ids, row in zip(sources, rows, strict=True):
        distinct[row] = ids
    return distinct, rows


def encoder_fingerprint(model: T5ForConditionalGeneration, sources: Sequence[Sequence[int]], dtype: str) -> dict:
    return {"kind": "encoder_outputs", "encoder_sha256": weights_sha256(model.encoder),
            "sources_sha256": ids_sha256(sources), "examples": len(sources), "dtype": dtype,
            "d_model": model.config.d_model}


def encoder_cache(model: T5ForConditionalGeneration, examples: Sequence[Sequence[int]], folder: Path, dtype: str,
                  pad_id: int, device: torch.device | str = "cpu") -> EncoderOutputs:
    """The cached `model.encoder` outputs of `examples` (source token ids, unpadded) in `folder`, built when missing."""
    sources, rows = distinct_sources(examples)
    if dtype not in DTYPES:
        raise ModelError(f"model.cache_dtype={dtype!r}: use one of {sorted(DTYPES)}.")
    encoder = model.encoder

    @torch.no_grad()
    def compute(indices: list[int]) -> list[dict[str, np.ndarray]]:
        batch = collate([{"index": i, "input_ids": sources[i], "labels": [0], "references": []} for i in indices],
                        pad_id)
        mask = batch["attention_mask"].to(device)
        hidden = encoder(input_ids=batch["input_ids"].to(device), attention_mask=mask).last_hidden_state.float()
        if dtype == "float16" and hidden.abs().max() > torch.finfo(torch.float16).max:
            raise ModelError("the encoder's outputs overflow float16 (T5 v1.1-style models can): set "
                             "model.cache_dtype: bfloat16.")
        stored = hidden.to(DTYPES[dtype]).cpu()
        bits = stored.view(torch.int16) if dtype == "bfloat16" else stored
        return [{"hidden": bits[row, :len(sources[i])].numpy()} for row, i in enumerate(indices)]

    was_training = encoder.training
    encoder.eval()  # the outputs the decoder sees at inference: no dropout
    try:
        cache = build_cache(folder, encoder_fingerprint(model, sources, dtype), [len(s) for s in sources],
                            {"hidden": dtype}, compute, what="encoder cache")
    finally:
        encoder.train(was_training)
    return EncoderOutputs(cache, rows)
