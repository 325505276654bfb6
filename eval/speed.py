"""Speed of one loaded variant: latency, tokens/s and sequences/s over a grid of batch sizes, beams and lengths.

Two modes, each cell timed after `warmup` untimed calls, `repeats` times:
- fixed: inputs of exactly `input_length` tokens (real test sources joined end to end and cut, EOS last; no padding),
  `min_new_tokens = max_new_tokens = new_tokens`, so every variant does the same work whatever it predicts: the mode
  to compare engines by. Every cell of batch_sizes x num_beams x input_lengths. A cell whose outputs are not exactly
  `new_tokens` long raises (an engine that ignores min_new_tokens would otherwise look fast).
- natural: `natural_batches` batches of consecutive real test inputs per batch size, right-padded, decoded with the
  run's generation settings until EOS or max_new_tokens: what serving the test set costs. A variant that stops
  earlier is faster here, legitimately; its token counts show it.

Generated tokens per row count the decoder steps that produced them: tokens after the start token up to and including
the first EOS (rows padded after EOS, as greedy and beam search pad them, are not counted further).
Latency is per generate call (one batch): median, p90 (linear interpolation), mean, min, max in milliseconds;
tokens/s and sequences/s are totals over the timed calls divided by their summed time.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import product
from typing import Any

import numpy as np

from distill.generation import pad_batch
from eval.config import GenerationConfig, SpeedConfig

Generate = Callable[..., np.ndarray]  # generate(input_ids, attention_mask, **kwargs) -> (N, length) int64


def count_generated(ids: np.ndarray, eos_ids: list[int]) -> np.ndarray:
    """Generated tokens per row of `generate`'s output (start token in column 0): up to and including the first EOS."""
    new = np.asarray(ids)[:, 1:]
    if not eos_ids or new.shape[1] == 0:
        return np.full(new.shape[0], new.shape[1], dtype=np.int64)
    is_eos = np.isin(new, eos_ids)
    first = np.argmax(is_eos, axis=1)
    return np.where(is_eos.any(axis=1), first + 1, new.shape[1]).astype(np.int64)


def fixed_inputs(sources: list[list[int]], batch_size: int, length: int, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """`batch_size` rows of exactly `length` tokens: the sources' tokens (EOS dropped) end to end, cut, EOS last."""
    stream = [t for s in sources for t in s if t != eos_id]
    if not stream:
        raise ValueError("fixed_inputs: the sources hold no tokens")
    need = batch_size * (length - 1)
    stream = stream * (need // len(stream) + 1)  # short test sets are reused: the content matters little here
    ids = np.asarray(stream[:need], dtype=np.int64).reshape(batch_size, length - 1)
    ids = np.concatenate([ids, np.full((batch_size, 1), eos_id, dtype=np.int64)], axis=1)
    return ids, np.ones_like(ids)


def natural_inputs(sources: list[list[int]], batch_size: int, batches: int, pad_id: int) \
        -> list[tuple[np.ndarray, np.ndarray]]:
    """`batches` batches of `batch_size` consecutive sources (in test-set order, wrapping around), right-padded."""
    rows = [sources[i % len(sources)] for i in range(batch_size * batches)]
    return [pad_batch(rows[b * batch_size:(b + 1) * batch_size], pad_id) for b in range(batches)]


def _stats_ms(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000.0
    return {"median": float(np.median(ms)), "p90": float(np.percentile(ms, 90)), "mean": float(ms.mean()),
            "min": float(ms.min()), "max": float(ms.max())}


def measure(generate: Generate, batches: list[tuple[np.ndarray, np.ndarray]], kwargs: dict[str, Any], warmup: int,
            repeats: int, eos_ids: list[int], clock: Callable[[], float] = time.perf_counter) -> dict[str, Any]:
    """Time `generate` on `batches`: `warmup` untimed calls (cycling over the batches), then `repeats` passes over all
    batches, each call timed. Returns latency statistics, token and sequence counts, and the per-row counts of the
    last pass (`tokens_per_row`)."""
    for i in range(warmup):
        generate(*batches[i % len(batches)], **kwargs)
    seconds, tokens, sequences, last_counts = [], 0, 0, []
    for _ in range(repeats):
        last_counts = []
        for ids, mask in batches:
            start = clock()
            out = generate(ids, mask, **kwargs)
            seconds.append(clock() - start)
            counts = count_generated(out, eos_ids)
            tokens += int(counts.sum())
            sequences += len(counts)
            last_counts.extend(int(c) for c in counts)
    total = float(sum(seconds))
    return {"warmup_calls": warmup, "timed_calls": len(seconds), "latency_ms": _stats_ms(seconds),
            "seconds": total, "generated_tokens": tokens, "sequences": sequences,
            "tokens_per_s": tokens / total if total > 0 else None,
            "sequences_per_s": sequences / total if total > 0 else None, "tokens_per_row": last_counts}


def run_grid(generate: Generate, sources: list[list[int]], speed: SpeedConfig, generation: GenerationConfig,
             eos_ids: list[int], pad_id: int, log: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """Every cell of both modes; one dict per cell (the `speed` list of results.json, before speed-ups)."""
    cells = []
    base = generation.kwargs()
    for batch_size, beams, length in product(speed.batch_sizes, speed.num_beams, speed.input_lengths):
        n = speed.new_tokens
        kwargs = {**base, "num_beams": beams, "min_new_tokens": n, "max_new_tokens": n}
        result = measure(generate, [fixed_inputs(sources, batch_size, length, eos_ids[0])], kwargs, speed.warmup,
                         speed.repeats, eos_ids)
        wrong = sorted({c for c in result["tokens_per_row"] if c != n})
        if wrong:
            raise RuntimeError(f"fixed-length cell batch {batch_size}, beams {beams}, input {length}: rows generated "
                               f"{wrong} tokens instead of {n}; the engine does not honour min_new_tokens.")
        cells.append({"mode": "fixed", "batch_size": batch_size, "num_beams": beams, "input_length": length,
                      "new_tokens": n, **result})
        log(f"fixed   batch {batch_size:3d} beams {beams} input {length:4d}: {result['latency_ms']['median']:9.1f} ms")
    for batch_size in speed.batch_sizes if speed.natural_batches else []:
        batches = natural_inputs(sources, batch_size, speed.natural_batches, pad_id)
        result = measure(generate, batches, base, speed.warmup, speed.repeats, eos_ids)
        cells.append({"mode": "natural", "batch_size": batch_size, "num_beams": generation.num_beams,
                      "input_length": None, "mean_input_length": float(np.mean([m.sum(1).mean() for _, m in batches])),
                      "max_new_tokens": generation.max_new_tokens, **result})
        log(f"natural batch {batch_size:3d} beams {generation.num_beams}: {result['latency_ms']['median']:9.1f} ms")
    return cells


def cell_key(cell: dict[str, Any]) -> tuple[str, int, int, int | None]:
    """Cells that measure the same work in every variant share a key (used for speed-ups)."""
    return cell["mode"], cell["batch_size"], cell["num_beams"], cell["input_length"]
