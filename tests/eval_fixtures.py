"""Fixtures the evaluation, publish and bench tests share: one thread for torch, a tiny T5 folder with a real
tokenizer, synthetic results. Each of tests/eval, tests/publish and tests/bench imports them in its conftest.py."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch

# a tiny classic T5 (relu, tied embeddings) whose vocabulary is the shared 96-piece test tokenizer's
TINY = {"d_model": 32, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 16,
        "feed_forward_proj": "relu", "dropout_rate": 0.0, "decoder_start_token_id": 0, "pad_token_id": 0,
        "eos_token_id": 1}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from threads; on a busy machine each op would wait for a preempted OpenMP thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_t5_dir(tmp_path_factory, tokenizer_dir) -> Path:
    """A save_pretrained folder (safetensors) of a random tiny T5 plus the test tokenizer's files."""
    from tokenizers import Tokenizer
    from transformers import T5Config, T5ForConditionalGeneration

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # session fixtures run outside the per-test setting
    try:
        torch.manual_seed(0)
        model = T5ForConditionalGeneration(T5Config(vocab_size=vocab, **TINY)).eval()
        folder = tmp_path_factory.mktemp("tiny") / "teacher"
        model.save_pretrained(folder)
    finally:
        torch.set_num_threads(threads)
    for file in tokenizer_dir.iterdir():
        shutil.copy(file, folder / file.name)
    return folder


def cell(mode: str, batch: int, beams: int, length: int | None, median: float, speedup: float | None) -> dict:
    """A speed cell as results.json holds it."""
    return {"mode": mode, "batch_size": batch, "num_beams": beams, "input_length": length, "new_tokens": 8,
            "mean_input_length": 20.0, "warmup_calls": 1, "timed_calls": 3,
            "latency_ms": {"median": median, "p90": median * 1.1, "mean": median, "min": median * 0.9,
                           "max": median * 1.2},
            "seconds": median * 3 / 1000, "generated_tokens": 24 * batch, "sequences": 3 * batch,
            "tokens_per_s": 24 * batch / (median * 3 / 1000), "sequences_per_s": 1000 * batch / median,
            "tokens_per_row": [8] * batch, "speedup": speedup}


def variant(kind: str, bleu: float, scale: float, delta: float | None, **fields) -> dict:
    """A variant entry of results.json whose latencies are the teacher's divided by `scale`."""
    speed = [cell("fixed", b, 1, n, 10.0 * n / 16 * b / scale, scale) for b in (1, 4) for n in (16, 64)]
    speed.append(cell("natural", 1, 1, None, 40.0 / scale, scale))
    quality = {"bleu": bleu, "chrf": bleu + 20, "rouge1": 30.0, "rouge2": 10.0, "rougeL": 25.0, "rougeLsum": 25.0}
    significance = None if delta is None else {m: {"delta": delta, "p_value": 0.001 if delta else 1.0,
                                                   "significant": bool(delta), "mean": quality[m], "ci": 0.5}
                                               for m in quality}
    return {"kind": kind, "path": f"/models/{kind}", "quantized": False, "hub": False, "source": None,
            "teacher": None, "quality": quality, "significance": significance, "speed": speed,
            "size_bytes": int(28e6 / scale), "size_files": ["model.safetensors"],
            "memory": {"after_load_mb": 300.0, "after_speed_mb": 320.0, "peak_mb": 350.0 / scale},
            "load_seconds": 0.5, "quality_seconds": 3.0, "threads": 2, "engine": {},
            "source_tokens": {"mean": 20.0, "max": 40},
            "predictions": "predictions/x.txt", **fields}


@pytest.fixture
def synthetic_results() -> dict:
    """A results.json dict of three variants (teacher, student, student ONNX) with one failed gate check."""
    from eval.config import EvalConfig, Variant
    from eval.environment import environment

    variants = {"teacher-torch": variant("torch", 30.0, 1.0, None),
                "student-torch": variant("torch", 28.0, 2.0, -2.0, teacher="teacher-torch"),
                "student-onnx": variant("onnx", 27.0, 4.0, -3.0, source="student-torch")}
    for name, v in variants.items():
        v["predictions"] = f"predictions/{name}.txt"
    checks = [{"variant": "student-torch", "against": "teacher-torch", "relation": "student", "metric": "bleu",
               "score": 28.0, "against_score": 30.0, "drop": 2.0, "margin": 5.0, "passed": True},
              {"variant": "student-onnx", "against": "student-torch", "relation": "export", "metric": "bleu",
               "score": 27.0, "against_score": 28.0, "drop": 1.0, "margin": 0.5, "passed": False}]
    config = EvalConfig(variants=[Variant("teacher-torch", "torch", "/m")])
    return {"schema_version": 1, "name": "synthetic", "created": "2026-11-26T10:00:00+00:00",
            "command": "python -m eval --config x.yaml", "config_file": "x.yaml", "config": dataclasses.asdict(config),
            "environment": environment(2),
            "dataset": {"path": "data/bible", "name": None, "split": "test", "examples": 3, "max_references": 2,
                        "task": "translation", "task_prefix": "translate English to French: ", "source_column": "en",
                        "target_column": "fr", "extra_references": ["fr_darby"]},
            "generation": {"num_beams": 1, "max_new_tokens": 16, "min_new_tokens": None, "no_repeat_ngram_size": 0,
                           "repetition_penalty": 1.0, "length_penalty": 1.0, "early_stopping": False,
                           "batch_size": 4},
            "reference": "teacher-torch", "headline_metrics": ["bleu"],
            "sacrebleu_signatures": {"bleu": "nrefs:2|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0",
                                     "chrf": "nrefs:2|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"},
            "speed_headline": {"mode": "natural", "batch_size": 1, "num_beams": 1, "input_length": None},
            "variants": variants, "gate": {"passed": False, "checks": checks}}
