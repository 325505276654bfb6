"""Does IO binding pay in OnnxT5's greedy loop? And what does beam search's top-k cost?

    .venv/bin/python bench/iobinding.py EXPORT_FOLDER      (an export with --int8, e.g. of a t5-small shape)

Times `generate` (batch 1, 64 input tokens, 32 new tokens forced, 2 threads, greedy and beam 4) with the plain
`session.run` and with IO binding (`OnnxT5.from_pretrained(..., io_binding=True)`, export/runtime/binding.py: the
cache stays OrtValues between steps); the tokens must be the same. Then beam search's `topk` against a full stable
sort on batch 8 x beam 4 x 32k scores. Run it with nothing else busy.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export import OnnxT5
from export.runtime.topk import topk

KWARGS = {"max_new_tokens": 32, "min_new_tokens": 32, "num_beams": 1, "do_sample": False}


def median_ms(fn: Callable[[], Any], n: int = 9) -> float:
    fn()
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    folder = Path(sys.argv[1])
    vocab = min(8000, json.loads((folder / "config.json").read_text())["vocab_size"])
    ids = np.random.default_rng(0).integers(2, vocab, size=(1, 64))
    ids[:, -1] = 1
    mask = np.ones_like(ids)
    for quantized in (False, True):
        plain = OnnxT5.from_pretrained(folder, quantized=quantized, threads=2)
        bound = OnnxT5.from_pretrained(folder, quantized=quantized, threads=2, io_binding=True)
        for beams in (1, 4):
            kwargs = {**KWARGS, "num_beams": beams}
            assert np.array_equal(bound.generate(ids, mask, **kwargs), plain.generate(ids, mask, **kwargs))
            times = [median_ms(lambda m=m, kwargs=kwargs: m.generate(ids, mask, **kwargs)) for m in (plain, bound)]
            print(f"{'int8' if quantized else 'fp32'} beams {beams}: plain run {times[0]:.1f} ms, IO binding "
                  f"{times[1]:.1f} ms ({times[0] / times[1]:.2f}x)")
    scores = np.random.default_rng(0).standard_normal((8, 4 * 32128)).astype(np.float32)
    print(f"topk: {median_ms(lambda: topk(scores, 8), 20):.2f} ms; stable argsort: "
          f"{median_ms(lambda: np.argsort(-scores, axis=-1, kind='stable')[:, :8], 20):.2f} ms (8 x 128,512, k = 8)")


if __name__ == "__main__":
    main()
