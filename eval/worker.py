"""One variant in its own process: load it, time the speed grid, predict the test inputs, record memory and size.

    python -m eval.worker JOB.json OUT.json      (`python -m eval` writes JOB.json and reads OUT.json)

A process per variant makes the peak resident memory (`eval.memory.peak_rss_mb`) that variant's alone, including
what its libraries cost (an ONNX worker never imports torch), and keeps one variant's threads, caches and allocator
state from touching the next one's timings. The order is load -> speed -> predictions, and the memory high-water mark
is read after each step: `after_load_mb` is the footprint of a loaded model, `peak_mb` includes the quality pass's
largest batch.

JOB.json: {"variant": {name, kind, path, quantized, hub, ...}, "sources": [str], "generation": {...},
           "speed": {...}, "threads": int, "max_source_length": int}
OUT.json: {"variant", "threads", "engine": {versions, threads}, "load_seconds", "size_bytes", "size_files",
           "memory": {"after_load_mb", "after_speed_mb", "peak_mb"}, "speed": [cell], "predictions": [str],
           "quality_seconds", "source_tokens"}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from distill.errors import cli_errors
from distill.generation import generate_texts
from eval.config import GenerationConfig, SpeedConfig
from eval.engines import Engine, load_engine
from eval.memory import peak_rss_mb
from eval.speed import run_grid


def encode(tokenizer: Any, texts: list[str], max_length: int) -> list[list[int]]:
    """Token ids with the tokenizer's own special tokens (T5: EOS last), truncated to `max_length`."""
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length)
    return [e.ids for e in tokenizer.encode_batch(texts)]


def predict(engine: Engine, sources: list[list[int]], generation: GenerationConfig) -> list[str]:
    """Decoded outputs in input order; batches of `generation.batch_size` sources of similar length."""
    kwargs = generation.kwargs()

    def decode(ids: list[list[int]]) -> list[str]:
        return [text.strip() for text in engine.tokenizer.decode_batch(ids, skip_special_tokens=True)]

    return generate_texts(lambda ids, mask: engine.generate(ids, mask, **kwargs), decode, sources, engine.pad_id,
                          max_rows=generation.batch_size)


def run(job: dict[str, Any]) -> dict[str, Any]:
    """Everything OUT.json holds, for the variant JOB.json names (see the module docstring)."""
    variant, threads = job["variant"], job["threads"]
    name = variant["name"]

    def log(message: str) -> None:
        print(f"[{name}] {message}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    engine = load_engine(variant["kind"], variant["path"], variant.get("quantized", False), variant.get("hub", False),
                         threads, draft=variant.get("draft"))
    load_seconds = time.perf_counter() - start
    memory = {"after_load_mb": peak_rss_mb()}
    log(f"loaded {variant['kind']} from {variant['path']} in {load_seconds:.1f} s ({memory['after_load_mb']:.0f} MiB)")
    sources = encode(engine.tokenizer, job["sources"], job["max_source_length"])
    generation = GenerationConfig(**job["generation"])
    speed = run_grid(engine.generate, sources, SpeedConfig(**job["speed"]), generation, engine.eos_ids,
                     engine.pad_id, log)
    memory["after_speed_mb"] = peak_rss_mb()
    start = time.perf_counter()
    predictions = predict(engine, sources, generation)
    quality_seconds = time.perf_counter() - start
    memory["peak_mb"] = peak_rss_mb()
    log(f"predicted {len(predictions)} examples in {quality_seconds:.1f} s; peak {memory['peak_mb']:.0f} MiB")
    engine_info = {**engine.info, "torch_imported": "torch" in sys.modules}  # an ONNX worker should not need it
    return {"variant": name, "threads": threads, "engine": engine_info, "load_seconds": load_seconds,
            "size_bytes": engine.size_bytes, "size_files": engine.files, "memory": memory, "speed": speed,
            "predictions": predictions, "quality_seconds": quality_seconds,
            "source_tokens": {"mean": float(np.mean([len(s) for s in sources])),
                              "max": max(len(s) for s in sources)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m eval.worker", description=__doc__.split("\n\n")[0])
    parser.add_argument("job", type=Path, metavar="JOB.json")
    parser.add_argument("out", type=Path, metavar="OUT.json")
    args = parser.parse_args(argv)
    with cli_errors("python -m eval.worker"):
        result = run(json.loads(args.job.read_text()))
    args.out.write_text(json.dumps(result, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
