"""Where OnnxT5's generate spends its time: the graph calls against the Python and numpy around them, then cProfile.

    .venv/bin/python bench/profile_beam.py EXPORT_FOLDER [int8] [BATCH INPUT [BEAMS]]
        (default batch 8, 64 input tokens, beam 4; 32 new tokens forced; random ids, EOS last)
"""

from __future__ import annotations

import cProfile
import json
import pstats
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from export import OnnxT5

KWARGS = {"max_new_tokens": 32, "min_new_tokens": 32, "do_sample": False}


class Timed:
    """A session whose `run` adds its seconds to `totals[name]`."""

    def __init__(self, session: Any, name: str, totals: dict[str, float]):
        self.session, self.name, self.totals = session, name, totals

    def run(self, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = self.session.run(*args, **kwargs)
        self.totals[self.name] += time.perf_counter() - start
        return out

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.session, attr)


def main() -> None:
    folder, rest = Path(sys.argv[1]), sys.argv[2:]
    quantized = rest[:1] == ["int8"]
    numbers = [int(a) for a in rest[quantized:]]
    batch, length, beams = (numbers + [8, 64, 4][len(numbers):])[:3]
    vocab = min(8000, json.loads((folder / "config.json").read_text())["vocab_size"])
    ids = np.random.default_rng(0).integers(2, vocab, size=(batch, length))
    ids[:, -1] = 1
    mask = np.ones_like(ids)
    model = OnnxT5.from_pretrained(folder, quantized=quantized, threads=2)
    totals = {"encoder": 0.0, "decoder": 0.0, "decoder_with_past": 0.0}
    for name in totals:
        setattr(model, name, Timed(getattr(model, name), name, totals))
    model.generate(ids, mask, num_beams=beams, **KWARGS)
    totals.update(dict.fromkeys(totals, 0.0))
    n, times = 5, []
    for _ in range(n):
        start = time.perf_counter()
        model.generate(ids, mask, num_beams=beams, **KWARGS)
        times.append(time.perf_counter() - start)
    total = statistics.median(times) * 1e3
    parts = {k: v / n * 1e3 for k, v in totals.items()}
    rest = total - sum(parts.values())
    print(f"total {total:.1f} ms | encoder {parts['encoder']:.1f}, first step {parts['decoder']:.1f}, steps "
          f"{parts['decoder_with_past']:.1f} ({parts['decoder_with_past'] / 31:.2f} per step) | python and numpy "
          f"{rest:.1f} ({rest / 32:.2f} per step)")
    profile = cProfile.Profile()
    profile.enable()
    model.generate(ids, mask, num_beams=beams, **KWARGS)
    profile.disable()
    pstats.Stats(profile).sort_stats("tottime").print_stats(10)


if __name__ == "__main__":
    main()
