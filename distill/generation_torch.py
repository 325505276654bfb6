"""A transformers model as the `generate(ids, mask) -> ids` function that `distill.generation` batches over."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from distill.generation import Generate, generate_texts

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def torch_generate(model: PreTrainedModel, num_beams: int = 1, max_new_tokens: int = 256) -> Generate:
    """`generate(ids, mask) -> ids` (numpy int64) running `model.generate` on the model's device, without sampling."""
    device = next(model.parameters()).device

    @torch.inference_mode()
    def generate(input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = model.generate(input_ids=torch.from_numpy(input_ids).to(device),
                             attention_mask=torch.from_numpy(attention_mask).to(device), num_beams=num_beams,
                             max_new_tokens=max_new_tokens, do_sample=False)
        return out.cpu().numpy()

    return generate


def torch_generate_texts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, sources: Sequence[Sequence[int]],
                         num_beams: int = 1, max_new_tokens: int = 256, max_tokens: int = 8192,
                         progress: bool = True) -> list[str]:
    """Texts generated for tokenized `sources`, in input order: batches sorted by length, each at most `max_tokens`
    padded source tokens times beams; special tokens dropped from the decoded text."""
    model.eval()
    return generate_texts(torch_generate(model, num_beams, max_new_tokens),
                          lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True), sources,
                          tokenizer.pad_token_id, max_tokens=max_tokens, num_beams=num_beams, progress=progress)
