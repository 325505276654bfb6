"""One decoder-with-past call timed alone: the graph's own cost, without the Python of a generate loop around it.

The shared-cache graphs (`export.shared_cache`), which OnnxT5 steps on, append to their cache in place: their call is
made as the runtime makes it (`step_call`), each present bound to its past's buffer. Run without that binding, every
call copies the whole cache into new presents, a cost the runtime never pays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.floor import median_seconds
from export.layout import SHARED_CACHE_INPUTS

ENCODER_LENGTH = 64  # the encoder positions every step's cross-attention reads
LENGTH, WIDTH, INDEX = SHARED_CACHE_INPUTS  # what a shared-cache graph takes besides its cache


def is_shared_cache(names: Any) -> bool:
    """Whether a graph whose inputs (or feed) have these names is a shared-cache one."""
    return set(SHARED_CACHE_INPUTS) <= set(names)


def step_feed(session: Any, batch: int, past: int, encoder_length: int = ENCODER_LENGTH) -> dict[str, np.ndarray]:
    """Inputs for one call of the decoder-with-past `session` (an onnxruntime session): one new token per row,
    `past` cached self-attention positions and `encoder_length` cross-attention ones, random keys and values. A
    shared-cache graph gets buffers of `past + 1` positions, `past` of them filled, and one beam per row."""
    rng = np.random.default_rng(0)
    shared = is_shared_cache(inp.name for inp in session.get_inputs())
    feed = {}
    for inp in session.get_inputs():
        if inp.name == "input_ids":
            feed[inp.name] = np.full((batch, 1), 5, dtype=np.int64)
        elif inp.name == "encoder_attention_mask":
            feed[inp.name] = np.ones((batch, encoder_length), dtype=np.int64)
        elif inp.name == LENGTH:
            feed[inp.name] = np.array([past], dtype=np.int32)
        elif inp.name == WIDTH:
            feed[inp.name] = np.array([1], dtype=np.int32)
        elif inp.name == INDEX:  # (inputs, beams, capacity): every position in the row's own buffer
            feed[inp.name] = np.zeros((batch, 1, past + 1), dtype=np.int32)
        elif inp.name.startswith("past_key_values."):  # past_key_values.{i}.{decoder,encoder}.{key,value}
            heads, d_kv = inp.shape[1], inp.shape[3]
            own = ".decoder." in inp.name
            length = (past + 1 if shared else past) if own else encoder_length
            feed[inp.name] = rng.standard_normal((batch, heads, length, d_kv)).astype(np.float32)
        else:
            raise BenchError(f"{inp.name} is not an input of a decoder-with-past graph; give one of an export's "
                             "decoder_with_past or decoder_shared_cache graphs")
    return feed


class BoundStep:
    """One call of a shared-cache graph's `session` on `feed` through IO binding, as OnnxT5 makes it: each present
    output in its past input's buffer. Every call writes the same position again, so repeated calls time the same
    step. It holds the bound buffers for as long as it lives."""

    def __init__(self, session: Any, feed: dict[str, np.ndarray]):
        import onnxruntime as ort

        self.session, self.binding = session, session.io_binding()
        self.values = {name: ort.OrtValue.ortvalue_from_numpy(value) for name, value in feed.items()}
        for name, value in self.values.items():
            self.binding.bind_ortvalue_input(name, value)
        for out in session.get_outputs():
            past = out.name.replace("present.", "past_key_values.", 1)
            if out.name.startswith("present.") and past in self.values:
                self.binding.bind_ortvalue_output(out.name, self.values[past])
            else:
                self.binding.bind_output(out.name)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)


def step_call(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
    """One call of `session` on `feed` as OnnxT5 makes it: a shared-cache graph's by `BoundStep`, any other's by
    `run`."""
    if is_shared_cache(feed):
        return BoundStep(session, feed)
    return lambda: session.run(None, feed)


def step_ms(session: Any, batch: int, past: int, repeats: int = 50) -> float:
    """Median milliseconds of one call of the decoder-with-past `session` at `past` cached positions."""
    return 1000 * median_seconds(step_call(session, step_feed(session, batch, past)), repeats)
