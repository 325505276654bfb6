"""Does IO binding pay in OnnxT5's greedy loop? And what does beam search's top-k cost?

    .venv/bin/python bench/iobinding.py EXPORT_FOLDER      (an export with --int8, e.g. of a t5-small shape)

Times `generate` (batch 1, 64 input tokens, 32 new tokens forced, 2 threads) as shipped and with the decoder-with-past
step run through an IO binding that feeds the previous step's present tensors back as OrtValues; the tokens must be
the same. Then beam search's `topk` against a full stable sort on batch 8 x beam 4 x 32k scores. Run it with nothing
else busy.
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
import onnxruntime as ort

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


Step = Callable[[np.ndarray, np.ndarray, list[Any], list[np.ndarray]], tuple[np.ndarray, list[Any]]]


def bound_step(model: OnnxT5) -> Step:
    """`model.step` with the past bound as OrtValues: the previous step's outputs are fed back without numpy."""
    session = model.decoder_with_past
    names = [o.name for o in session.get_outputs()]
    past = [i.name for i in session.get_inputs() if i.name.startswith("past_key_values.")]
    self_names = [name for name in past if ".decoder." in name]
    cross_names = [name for name in past if ".encoder." in name]

    def step(tokens: np.ndarray, mask: np.ndarray, own: list[Any], cross: list[np.ndarray]) -> tuple[np.ndarray, list]:
        binding = session.io_binding()
        binding.bind_cpu_input("input_ids", np.ascontiguousarray(tokens))
        binding.bind_cpu_input("encoder_attention_mask", mask)
        for name, value in zip(self_names, own, strict=True):
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, value)
        for name, value in zip(cross_names, cross, strict=True):
            binding.bind_cpu_input(name, value)
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        outs = binding.get_outputs()
        return outs[0].numpy()[:, -1, :], outs[1:]

    return step


def main() -> None:
    folder = Path(sys.argv[1])
    vocab = min(8000, json.loads((folder / "config.json").read_text())["vocab_size"])
    ids = np.random.default_rng(0).integers(2, vocab, size=(1, 64))
    ids[:, -1] = 1
    mask = np.ones_like(ids)
    for quantized in (False, True):
        model = OnnxT5.from_pretrained(folder, quantized=quantized, threads=2)
        want = model.generate(ids, mask, **KWARGS)
        plain = median_ms(lambda model=model: model.generate(ids, mask, **KWARGS))
        model.step = bound_step(model)
        assert np.array_equal(model.generate(ids, mask, **KWARGS), want)
        bound = median_ms(lambda model=model: model.generate(ids, mask, **KWARGS))
        print(f"{'int8' if quantized else 'fp32'} greedy: plain run {plain:.1f} ms, IO binding {bound:.1f} ms")
    scores = np.random.default_rng(0).standard_normal((8, 4 * 32128)).astype(np.float32)
    print(f"topk: {median_ms(lambda: topk(scores, 8), 20):.2f} ms; stable argsort: "
          f"{median_ms(lambda: np.argsort(-scores, axis=-1, kind='stable')[:, :8], 20):.2f} ms (8 x 128,512, k = 8)")


if __name__ == "__main__":
    main()
