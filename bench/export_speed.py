"""Speed of the export against PyTorch, measured side by side in one process: `make bench-export`.

    python -m bench.export_speed                 # a random model of t5-small's shape (bench.shapes), exported here
    python -m bench.export_speed --model runs/distill/student --beams 1,4 --batch 1

For each decoding (greedy, beam 4) it times transformers' `generate`, `OnnxT5` fp32 and `OnnxT5` int8 on the same
inputs (batch 1, 64 input tokens, 32 new tokens forced with min_new_tokens = max_new_tokens, so that every engine
decodes exactly as many steps), with the same thread count, and prints the ratios against torch. It also measures the
memory bandwidth (`bench.floor.bandwidth`) and prints the fp32 decoder step against the
floor that bandwidth sets: the bytes of weights one step must read (`bench.floor.step_weight_bytes`: the
decoder-with-past graph's weights but the tables it only gathers rows from) divided by the bandwidth.

This is a benchmark, not a test: it prints measurements and checks nothing but token agreement between the engines.
Numbers from one run are comparable with each other only; run it with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.decoder_step import step_ms
from bench.floor import bandwidth, step_weight_bytes
from bench.shapes import T5_SMALL
from distill.models import load_t5
from export import OnnxT5
from export.exporter import export
from export.layout import DECODER_WITH_PAST, quantized_name


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.export_speed", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", help="a T5 folder to benchmark (default: a t5-small-shaped random model)")
    parser.add_argument("--decoder-layers", type=int, default=6,
                        help="decoder depth of the random t5-small-shaped model (default %(default)s)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--input-length", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beams", default="1,4", help="comma-separated beam sizes (1: greedy)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="threads for torch and onnxruntime alike (default: torch's, %(default)s)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per cell (median reported)")
    parser.add_argument("--workdir", type=Path, help="where the export goes (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    args.beams = [int(b) for b in args.beams.split(",")]
    return args


def random_t5_small(folder: Path, decoder_layers: int, seed: int = 0) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(T5Config(**{**T5_SMALL, "num_decoder_layers": decoder_layers}))
    model.save_pretrained(folder)
    return folder


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    """Seconds of each of `repeats` calls after one untimed warm-up call; the last call's result."""
    out = fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return times, out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-export.") as tmp:
        work = args.workdir or Path(tmp)
        source = Path(args.model) if args.model else random_t5_small(work / "model", args.decoder_layers)
        print(f"model: {source if args.model else f't5-small shape, random weights, 6-{args.decoder_layers} layers'}")
        print("exporting (fp32 + int8, validated against PyTorch) ...", flush=True)
        onnx_dir = export(str(source), work / "onnx", int8=True, require_tokenizer=False)
        model = load_t5(str(source)).eval()
        runtimes = {"onnx-fp32": OnnxT5.from_pretrained(onnx_dir, threads=args.threads),
                    "onnx-int8": OnnxT5.from_pretrained(onnx_dir, quantized=True, threads=args.threads)}

        rng = np.random.default_rng(0)
        ids = rng.integers(2, model.config.vocab_size, size=(args.batch, args.input_length), dtype=np.int64)
        mask = np.ones_like(ids)
        ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
        results = {"threads": args.threads, "batch": args.batch, "input_length": args.input_length,
                   "new_tokens": args.new_tokens, "cells": []}
        print(f"batch {args.batch}, input {args.input_length} tokens, {args.new_tokens} new tokens forced, "
              f"{args.threads} threads, median of {args.repeats}")
        print(f"{'decoding':<10}{'engine':<12}{'median ms':>10}{'p90 ms':>9}{'tokens/s':>10}{'vs torch':>10}"
              f"{'same tokens':>13}")
        for beams in args.beams:
            kwargs = {"max_new_tokens": args.new_tokens, "min_new_tokens": args.new_tokens, "num_beams": beams,
                      "do_sample": False}
            with torch.inference_mode():
                torch_times, want = timed(
                    lambda kwargs=kwargs: model.generate(input_ids=ids_t, attention_mask=mask_t, **kwargs),
                    args.repeats)
            want = want.numpy()
            cells = {"torch": (torch_times, want)}
            for name, rt in runtimes.items():
                cells[name] = timed(lambda rt=rt, kwargs=kwargs: rt.generate(ids, mask, **kwargs), args.repeats)
            base = statistics.median(torch_times)
            for engine, (times, got) in cells.items():
                med = statistics.median(times)
                p90 = float(np.percentile(times, 90))
                same = float(np.mean(got == want)) if got.shape == want.shape else 0.0
                cell = {"decoding": "greedy" if beams == 1 else f"beam{beams}", "engine": engine,
                        "median_ms": med * 1e3, "p90_ms": p90 * 1e3, "tokens_per_s": args.batch * args.new_tokens / med,
                        "speedup_vs_torch": base / med, "token_agreement_with_torch": same}
                results["cells"].append(cell)
                print(f"{cell['decoding']:<10}{engine:<12}{med * 1e3:>10.1f}{p90 * 1e3:>9.1f}"
                      f"{cell['tokens_per_s']:>10.1f}{base / med:>9.2f}x{same:>13.3f}")

        bw = bandwidth(args.threads)
        weights = step_weight_bytes(onnx_dir / DECODER_WITH_PAST)  # fp32: what the torch decoder step reads too
        floor_ms = 1000 * weights / bw
        past = args.new_tokens // 2
        fp32_step = step_ms(runtimes["onnx-fp32"].decoder_with_past, args.batch, past)
        int8_step = step_ms(runtimes["onnx-int8"].decoder_with_past, args.batch, past)
        greedy = {c["engine"]: c for c in results["cells"] if c["decoding"] == "greedy"}
        results.update({"bandwidth_gb_s": bw / 1e9, "step_weight_mb": weights / 1e6,
                        "floor_ms_per_step": floor_ms, "fp32_step_ms": fp32_step, "int8_step_ms": int8_step,
                        "fp32_step_vs_floor": fp32_step / floor_ms})
        print(f"\nmemory bandwidth {bw / 1e9:.1f} GB/s ({args.threads} threads); one decoder step reads "
              f"{weights / 1e6:.1f} MB of fp32 weights -> floor {floor_ms:.2f} ms/step")
        print(f"decoder_with_past alone at past length {past}, batch {args.batch}: fp32 {fp32_step:.2f} ms "
              f"({fp32_step / floor_ms:.2f}x the floor), int8 {int8_step:.2f} ms")
        if "onnx-fp32" in greedy:
            per_token = greedy["onnx-fp32"]["median_ms"] / args.new_tokens
            print(f"whole greedy generate, fp32: {per_token:.2f} ms per new token (encoder and Python included), "
                  f"{per_token / floor_ms:.2f}x the floor")
        sizes = {f: (onnx_dir / f).stat().st_size / 1e6 for f in (DECODER_WITH_PAST, quantized_name(DECODER_WITH_PAST))}
        results["decoder_with_past_mb"] = sizes
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2) + "\n")
            print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
