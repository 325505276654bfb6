"""One decoder-with-past call timed alone: the graph's own cost, without the Python of a generate loop around it."""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.floor import median_seconds

ENCODER_LENGTH = 64  # the encoder positions every step's cross-attention reads


def step_feed(session: Any, batch: int, past: int, encoder_length: int = ENCODER_LENGTH) -> dict[str, np.ndarray]:
    """Inputs for one call of the decoder-with-past `session` (an onnxruntime session): one new token per row,
    `past` cached self-attention positions and `encoder_length` cross-attention ones, random keys and values."""
    rng = np.random.default_rng(0)
    feed = {}
    for inp in session.get_inputs():
        if inp.name == "input_ids":
            feed[inp.name] = np.full((batch, 1), 5, dtype=np.int64)
        elif inp.name == "encoder_attention_mask":
            feed[inp.name] = np.ones((batch, encoder_length), dtype=np.int64)
        else:  # past_key_values.{i}.{decoder,encoder}.{key,value}: (batch, heads, length, d_kv)
            heads, d_kv = inp.shape[1], inp.shape[3]
            length = past if ".decoder." in inp.name else encoder_length
            feed[inp.name] = rng.standard_normal((batch, heads, length, d_kv)).astype(np.float32)
    return feed


def step_ms(session: Any, batch: int, past: int, repeats: int = 50) -> float:
    """Median milliseconds of one call of the decoder-with-past `session` at `past` cached positions."""
    feed = step_feed(session, batch, past)
    return 1000 * median_seconds(lambda: session.run(None, feed), repeats)
