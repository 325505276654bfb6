"""Tiny T5 models built from T5Config, saved with save_pretrained, exported once per session and shared by the tests."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

VOCAB = 48
BASE = {"vocab_size": VOCAB, "d_model": 32, "d_ff": 64, "dropout_rate": 0.0, "decoder_start_token_id": 0,
        "pad_token_id": 0, "eos_token_id": 1}
# every T5 family member the export must handle: t5 v1.0 (relu, tied embeddings, decoder output scaled), T5 v1.1 /
# flan (gated-gelu, own lm_head, unscaled), a student with fewer decoder than encoder layers, heads * d_kv != d_model
CONFIGS = {
    "t5-relu-tied": {"feed_forward_proj": "relu", "tie_word_embeddings": True, "num_layers": 2,
                     "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16},
    "t5v1.1-gated-untied": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "num_layers": 2,
                            "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16},
    "3enc-1dec": {"feed_forward_proj": "relu", "tie_word_embeddings": True, "num_layers": 3,
                  "num_decoder_layers": 1, "num_heads": 4, "d_kv": 8},
    "odd-heads-dkv": {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False, "num_layers": 2,
                      "num_decoder_layers": 2, "num_heads": 3, "d_kv": 7},
}


def make_t5(path: Path, fields: dict, seed: int = 1, gain: float | None = None):
    """Save a tiny T5 at `path` and return it (eval mode).

    Weights are redrawn with larger linear gains than T5's init, so that the random model does not just repeat one
    token, and the EOS logit is raised, so that some rows end early: greedy and beam comparisons then mean something.
    `gain` (default 4 tied, 3 untied): a smaller one makes a calmer model, whose tokens survive small weight errors.
    transformers 5.x keeps every fresh T5 tied; a v1.1-style model gets its own `lm_head` (untied on reload).
    """
    from transformers import T5Config, T5ForConditionalGeneration

    tied = fields["tie_word_embeddings"]
    model = T5ForConditionalGeneration(T5Config(**{**BASE, **fields})).eval()
    if not tied:
        model.lm_head.weight = torch.nn.Parameter(model.shared.weight.detach().clone())
    g = torch.Generator().manual_seed(seed)
    gain = gain or (4.0 if tied else 3.0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 2:
                table = any(key in name for key in ("shared", "relative_attention_bias", "lm_head"))
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if table else gain / p.shape[1] ** 0.5))
        if not tied:
            model.lm_head.weight *= 0.15  # unscaled decoder output: keep logits in a realistic range (about +-15)
        model.lm_head.weight[BASE["eos_token_id"]] *= 2.0
    model.save_pretrained(path)
    reloaded = T5ForConditionalGeneration.from_pretrained(path).eval()
    assert (reloaded.lm_head.weight is reloaded.shared.weight) is tied
    return reloaded


def padded_batch(lengths: list[int], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random ids (never pad or EOS) right-padded with 0, and their attention mask."""
    rng = np.random.default_rng(seed)
    mask = (np.arange(max(lengths))[None, :] < np.asarray(lengths)[:, None]).astype(np.int64)
    return rng.integers(2, VOCAB, mask.shape) * mask, mask


def with_past_feed(session, seed, past=5, length=7):
    """Random inputs of one with-past step: a row, `past` cached positions, an input of `length` tokens."""
    rng = np.random.default_rng(seed)
    feed = {"input_ids": rng.integers(3, 50, size=(1, 1)), "encoder_attention_mask": np.ones((1, length), np.int64)}
    for arg in session.get_inputs():
        if arg.name.startswith("past_key_values."):
            positions = past if ".decoder." in arg.name else length
            feed[arg.name] = rng.standard_normal((1, arg.shape[1], positions, arg.shape[3])).astype(np.float32)
    return feed


@contextmanager
def one_torch_thread():
    """Tiny models gain nothing from threads, and on a busy machine each op waits for a preempted OpenMP thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _torch_on_one_thread():
    with one_torch_thread():
        yield


class Exported:
    def __init__(self, name: str, model_dir: Path, onnx_dir: Path, model):
        self.name, self.model_dir, self.onnx_dir, self.model = name, model_dir, onnx_dir, model


@pytest.fixture(scope="session")
def export_of(tmp_path_factory):
    """export_of(name) -> Exported: the model CONFIGS[name], saved and exported (fp32) once per session."""
    from export.exporter import export

    cache: dict[str, Exported] = {}

    def get(name: str) -> Exported:
        if name not in cache:
            root = tmp_path_factory.mktemp(name.replace(".", "_"))
            with one_torch_thread():  # session fixtures run outside the per-test setting
                model = make_t5(root / "model", CONFIGS[name])
                export(str(root / "model"), root / "onnx", require_tokenizer=False)
            cache[name] = Exported(name, root / "model", root / "onnx", model)
        return cache[name]

    return get


@pytest.fixture(scope="session", params=list(CONFIGS))
def exported(request, export_of) -> Exported:
    return export_of(request.param)


@pytest.fixture(scope="session")
def tied(export_of) -> Exported:
    return export_of("t5-relu-tied")


@pytest.fixture(scope="session")
def tiny_t5():
    """tiny_t5(path, name, seed=1, **fields): save the model CONFIGS[name] (fields overridden) at `path`, return it."""
    return lambda path, name, seed=1, **fields: make_t5(path, {**CONFIGS[name], **fields}, seed)


@pytest.fixture(scope="session")
def batch():
    """batch(lengths, seed=0) -> (ids, mask): a right-padded batch of random ids."""
    return padded_batch
