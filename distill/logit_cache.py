"""The teacher's distribution at every training target position, kept as its k most likely tokens, computed once.

KD runs the teacher's whole forward on every batch, recomputing the same logits each epoch. With
`DistillModule(logit_cache=FOLDER, logit_cache_k=k)` the teacher runs once over the training split (teacher-forced,
eval mode, fp32) and the cache keeps, per target position, the ids of its k most likely tokens and their
log-probabilities at the distillation temperature (`log_softmax(logits / T)`), in float16 or bfloat16. The KL term
is then `losses.topk_distill_kl`: the teacher's top k plus one bucket for the rest of its mass. The cache is tied to
the sha256 of the teacher's weights, of the tokenized sources and targets, k, T and the dtype.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from distill.batching import collate
from distill.encoder_cache import DTYPES
from distill.errors import ModelError
from distill.example_cache import ExampleCache, build_cache, ids_sha256, weights_sha256

if TYPE_CHECKING:
    from transformers import T5ForConditionalGeneration


def logit_fingerprint(teacher: T5ForConditionalGeneration, sources: Sequence[Sequence[int]],
                      targets: Sequence[Sequence[int]], k: int, temperature: float, dtype: str) -> dict:
    return {"kind": "teacher_topk_logprobs", "teacher_sha256": weights_sha256(teacher),
            "data_sha256": ids_sha256(sources, targets), "examples": len(sources), "k": k,
            "temperature": float(temperature), "dtype": dtype}


def id_dtype(vocab_size: int) -> str:
    """int16 holds the ids of a vocabulary up to 32,767 tokens (t5's 32k); mT5's 250k needs int32."""
    return "int16" if vocab_size <= np.iinfo(np.int16).max + 1 else "int32"


def logit_cache(teacher: T5ForConditionalGeneration, sources: Sequence[Sequence[int]],
                targets: Sequence[Sequence[int]], folder: Path, k: int, temperature: float, dtype: str,
                pad_id: int, device: torch.device | str = "cpu") -> ExampleCache:
    """The cache of `teacher`'s top-`k` log-probabilities at `temperature` for every target position, in `folder`."""
    vocab = teacher.config.vocab_size
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= vocab:
        raise ModelError(f"model.logit_cache_k={k!r}: must be a whole number from 1 to the vocabulary size ({vocab}).")
    if dtype not in DTYPES:
        raise ModelError(f"model.cache_dtype={dtype!r}: use one of {sorted(DTYPES)}.")
    ids_dtype = id_dtype(vocab)
    ids_torch = torch.int16 if ids_dtype == "int16" else torch.int32

    @torch.no_grad()
    def compute(indices: list[int]) -> list[dict[str, np.ndarray]]:
        teacher.to(device)  # only when something is computed: a complete cache never moves the teacher
        batch = collate([{"index": i, "input_ids": sources[i], "labels": targets[i], "references": []}
                         for i in indices], pad_id)
        labels = batch["labels"].to(device)
        logits = teacher(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                         decoder_input_ids=teacher._shift_right(labels), use_cache=False).logits
        logprobs, ids = F.log_softmax(logits.float() / temperature, dim=-1).topk(k, dim=-1)  # (B, T, k)
        stored = logprobs.to(DTYPES[dtype]).cpu()
        bits = stored.view(torch.int16) if dtype == "bfloat16" else stored
        ids = ids.to(ids_torch).cpu()
        return [{"logprobs": bits[row, :len(targets[i])].numpy(), "ids": ids[row, :len(targets[i])].numpy()}
                for row, i in enumerate(indices)]

    was_training = teacher.training
    teacher.eval()
    try:
        return build_cache(folder, logit_fingerprint(teacher, sources, targets, k, temperature, dtype),
                           [len(s) + len(t) for s, t in zip(sources, targets, strict=True)],
                           {"logprobs": dtype, "ids": ids_dtype}, compute, what="teacher logit cache",
                           batch_rows=max(256, (1 << 26) // vocab))  # fp32 logits of a batch: about 256 MB
    finally:
        teacher.train(was_training)
