"""Speed bookkeeping (what is counted, how often it is called), on fakes and on a tiny T5; never its timings."""

from __future__ import annotations

import json
from itertools import count

import numpy as np
import pytest

from eval.config import GenerationConfig, SpeedConfig
from eval.engines import load_engine
from eval.speed import count_generated, fixed_inputs, measure, natural_inputs, run_grid
from eval.worker import encode

EOS, PAD = 1, 0


def test_count_generated_stops_at_the_first_eos_whatever_the_padding():
    ids = np.array([[0, 5, 6, 1, 0, 0],    # greedy: EOS, then pad
                    [0, 5, 1, 1, 1, 1],    # beam search with pad 0 fills with EOS
                    [0, 5, 6, 7, 8, 9],    # never ended: all 5 count
                    [0, 1, 0, 0, 0, 0]])   # EOS at once: one decoder step
    assert count_generated(ids, [EOS]).tolist() == [3, 2, 5, 1]
    assert count_generated(ids, []).tolist() == [5, 5, 5, 5]


def test_fixed_inputs_cut_real_tokens_to_the_exact_length_with_eos_last():
    sources = [[10, 11, 12, EOS], [20, 21, EOS]]
    ids, mask = fixed_inputs(sources, batch_size=3, length=4, eos_id=EOS)
    assert ids.tolist() == [[10, 11, 12, EOS], [20, 21, 10, EOS], [11, 12, 20, EOS]]  # wraps around a short set
    assert mask.tolist() == [[1] * 4] * 3


def test_natural_inputs_are_consecutive_padded_batches():
    sources = [[5, EOS], [6, 7, 8, EOS], [9, EOS]]
    batches = natural_inputs(sources, batch_size=2, batches=2, pad_id=PAD)
    assert [ids.tolist() for ids, _ in batches] == [[[5, EOS, PAD, PAD], [6, 7, 8, EOS]], [[9, EOS], [5, EOS]]]
    assert batches[0][1].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_measure_counts_warmup_repeats_tokens_and_sequences():
    calls = []

    def generate(ids, mask, **kwargs):
        calls.append((ids.shape[0], kwargs))
        out = np.full((ids.shape[0], 5), 7)
        out[:, 0], out[0, 3:] = 0, EOS  # row 0: 3 tokens (EOS included), other rows: 4
        return out

    batches = [fixed_inputs([[4, 5, EOS]], b, 3, EOS) for b in (2, 3)]
    ticks = count()  # every clock() call advances one second: each timed call takes exactly 1 s
    result = measure(generate, batches, {"num_beams": 2}, warmup=3, repeats=4, eos_ids=[EOS],
                     clock=lambda: float(next(ticks)))
    assert len(calls) == 3 + 4 * 2 and all(kwargs == {"num_beams": 2} for _, kwargs in calls)
    assert [b for b, _ in calls[:3]] == [2, 3, 2]  # warm-up cycles over the batches
    assert (result["warmup_calls"], result["timed_calls"], result["sequences"]) == (3, 8, 4 * 5)
    assert result["generated_tokens"] == 4 * ((3 + 4) + (3 + 4 + 4))
    assert result["tokens_per_row"] == [3, 4, 3, 4, 4]
    assert result["latency_ms"] == {"median": 1000.0, "p90": 1000.0, "mean": 1000.0, "min": 1000.0, "max": 1000.0}
    assert result["seconds"] == 8.0 and result["tokens_per_s"] == result["generated_tokens"] / 8
    assert result["sequences_per_s"] == 20 / 8


def test_fixed_mode_refuses_an_engine_that_stops_early():
    def stops_early(ids, mask, **kwargs):
        return np.array([[0, 5, EOS, 0]] * ids.shape[0])

    speed = SpeedConfig(batch_sizes=[1], num_beams=[1], input_lengths=[4], new_tokens=3, warmup=0, repeats=1)
    with pytest.raises(RuntimeError, match=r"generated \[2\] tokens instead of 3"):
        run_grid(stops_early, [[4, 5, EOS]], speed, GenerationConfig(), [EOS], PAD)


@pytest.fixture(scope="module")
def tiny_torch(tiny_t5_dir):
    return load_engine("torch", str(tiny_t5_dir), threads=1)


def test_grid_on_a_tiny_t5_generates_exactly_new_tokens_in_fixed_mode(tiny_torch):
    sources = encode(tiny_torch.tokenizer, ["translate English to French: the lord said unto moses",
                                            "translate English to French: go", "translate English to French: bread"],
                     max_length=64)
    speed = SpeedConfig(batch_sizes=[1, 3], num_beams=[1, 2], input_lengths=[4, 9], new_tokens=5, natural_batches=2,
                        warmup=1, repeats=2, threads=1)
    cells = run_grid(tiny_torch.generate, sources, speed, GenerationConfig(max_new_tokens=6), tiny_torch.eos_ids,
                     tiny_torch.pad_id)
    fixed = [c for c in cells if c["mode"] == "fixed"]
    natural = [c for c in cells if c["mode"] == "natural"]
    assert [(c["batch_size"], c["num_beams"], c["input_length"]) for c in fixed] == [
        (b, k, n) for b in (1, 3) for k in (1, 2) for n in (4, 9)]
    for c in fixed:
        assert c["tokens_per_row"] == [5] * c["batch_size"]
        assert c["generated_tokens"] == 5 * c["batch_size"] * 2 and c["timed_calls"] == 2 and c["warmup_calls"] == 1
    assert [(c["batch_size"], c["timed_calls"], c["sequences"]) for c in natural] == [(1, 4, 4), (3, 4, 12)]
    for c in natural:
        assert all(1 <= n <= 6 for n in c["tokens_per_row"]) and c["max_new_tokens"] == 6
    expected = {"mode", "batch_size", "num_beams", "input_length", "warmup_calls", "timed_calls", "latency_ms",
                "seconds", "generated_tokens", "sequences", "tokens_per_s", "sequences_per_s", "tokens_per_row"}
    for c in json.loads(json.dumps(cells)):  # what the worker writes
        assert expected <= set(c) and set(c["latency_ms"]) == {"median", "p90", "mean", "min", "max"}
        assert c["latency_ms"]["min"] <= c["latency_ms"]["median"] <= c["latency_ms"]["p90"] <= c["latency_ms"]["max"]


def test_worker_tokenizes_as_transformers_does(tiny_t5_dir, tiny_torch):
    from transformers import AutoTokenizer

    texts = ["translate English to French: the lord said unto moses", "translate English to French: go " * 30]
    reference = AutoTokenizer.from_pretrained(tiny_t5_dir)(texts, max_length=16, truncation=True)["input_ids"]
    assert encode(tiny_torch.tokenizer, texts, max_length=16) == reference
    assert tiny_torch.eos_ids == [EOS] and tiny_torch.pad_id == PAD


def test_torch_int8_quantizes_every_linear_and_reports_its_size(tiny_t5_dir, tiny_torch):
    import torch

    engine = load_engine("torch-int8", str(tiny_t5_dir), threads=1)
    linears = [m for m in engine.model.modules() if isinstance(m, torch.nn.Linear)]
    dynamic = [m for m in engine.model.modules() if type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")]
    assert not linears and dynamic
    assert 0 < engine.size_bytes < tiny_torch.size_bytes
    ids, mask = fixed_inputs([[4, 5, 6, EOS]], 2, 4, EOS)
    out = engine.generate(ids, mask, max_new_tokens=3, min_new_tokens=3)
    assert out.shape == (2, 4) and out.dtype == np.int64
