"""Where the peak resident memory of an OnnxT5 process goes, and what onnxruntime's memory options change.

    PYTHONPATH=. .venv-serve/bin/python bench/memory_probe.py EXPORT_FOLDER VARIANT [BATCH BEAMS LENGTH]

One fresh process per call (VmHWM only grows); prints VmRSS and VmHWM after loading the int8 graphs, after each
graph's first two runs and after two generate calls on BATCH x LENGTH random input tokens (default 32 x 256, beam 4,
32 new tokens: the largest cell of `make bench`). VARIANT:
    runtime       OnnxT5 as it ships: the encoder and first-step arenas shrink after each run
    trim          as runtime, then glibc's malloc_trim after each generate (what numpy's freed arrays hold)
    keep          no arena shrinks
    shrinkall     the per-step arena shrinks after every step too
    noarena       no CPU arena in any session (glibc then keeps the freed memory)
    noarena-step  no arena for the per-step graph only, and malloc_trim after each generate
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from export import OnnxT5
from export.layout import DECODER_WITH_PAST, GRAPHS, quantized_name
from export.runtime.sessions import session_options
from export.runtime.settings import settings_from_file


def mem() -> str:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return " ".join(f"{k} {int(fields[k].split()[0]) / 1024:7.1f} MiB" for k in ("VmRSS", "VmHWM"))


class Probed:
    """A session that prints the process's memory after its first two runs; `options` replaces the run options."""

    def __init__(self, session: ort.InferenceSession, name: str, options: Any):
        self.session, self.name, self.options, self.calls = session, name, options, 0

    def run(self, outputs: list[str] | None, feed: dict[str, np.ndarray], options: Any = None) -> list[Any]:
        out = self.session.run(outputs, feed, options if self.options == "runtime" else self.options)
        self.calls += 1
        if self.calls <= 2:
            print(f"    after {self.name} run {self.calls}: {mem()}")
        return out

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.session, attr)


def main() -> None:
    folder, variant = Path(sys.argv[1]), sys.argv[2]
    batch, beams, length = (int(x) for x in (sys.argv[3:6] or (32, 4, 256)))
    shrink = ort.RunOptions()
    shrink.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    sessions = {}
    for graph in GRAPHS:
        options = session_options(2, spin="always" if graph == DECODER_WITH_PAST else "never")
        options.enable_cpu_mem_arena = not (variant == "noarena" or (variant == "noarena-step"
                                                                     and graph == DECODER_WITH_PAST))
        session = ort.InferenceSession(str(folder / quantized_name(graph)), options,
                                       providers=["CPUExecutionProvider"])
        run_options = {"keep": None, "noarena": None, "shrinkall": shrink}.get(variant, "runtime")
        sessions[graph] = Probed(session, graph.removesuffix("_model.onnx"), run_options)
    config = json.loads((folder / "config.json").read_text())
    model = OnnxT5(folder, sessions, settings_from_file(folder / "generation_config.json"), config)
    print(f"{variant:10s} loaded      {mem()}")
    ids = np.random.default_rng(0).integers(2, min(8000, config["vocab_size"]), size=(batch, length))
    for _ in range(2):
        model.generate(ids, num_beams=beams, max_new_tokens=32, min_new_tokens=32)
        print(f"{variant:10s} generate    {mem()}")
        if variant in ("trim", "noarena-step"):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            print(f"{variant:10s} malloc_trim {mem()}")


if __name__ == "__main__":
    main()
