"""The two steps of `decoder_model_merged.onnx` (`export.merge`), each with the interface of its own graph's session.

One session holds the decoder's weights once; `Branch(session, use_cache)` feeds `use_cache_branch` and the inputs
the other branch reads but this one does not: the first step gets past K/V of length 0, a step on the cache gets
encoder_hidden_states of length 0 (the `If` reads neither, but onnxruntime wants every graph input fed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from export.layout import DECODER_MERGED, USE_CACHE_BRANCH
from export.runtime.sessions import GraphLike, fixed_size

FIRST_INPUTS = ("input_ids", "encoder_attention_mask", "encoder_hidden_states")


def _size(dim: Any, what: str) -> int:
    return fixed_size(dim, what, DECODER_MERGED)


class Branch(GraphLike):
    """One branch of the merged decoder: `run`, `get_inputs` and `get_outputs` as its separate graph has them."""

    def __init__(self, session: ort.InferenceSession, use_cache: bool):
        self.session = session
        self.use_cache = use_cache
        inputs = [i for i in session.get_inputs() if i.name != USE_CACHE_BRANCH]
        own = (lambda n: n in FIRST_INPUTS[:2] or n.startswith("past_key_values.")) if use_cache \
            else (lambda n: n in FIRST_INPUTS)
        self._inputs = [i for i in inputs if own(i.name)]
        self._outputs = [o for o in session.get_outputs() if not (use_cache and ".encoder." in o.name)]
        self._output_names = [o.name for o in self._outputs]
        fed = {i.name for i in self._inputs}
        # the inputs this branch does not read, with their fixed sizes (heads, d_kv, d_model)
        self._unread = {i.name: i.shape for i in inputs if i.name not in fed}
        self._flag = np.array([use_cache])

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray],
            run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        feed = dict(feed)
        rows = {"decoder": feed["input_ids"].shape[0], "encoder": feed["encoder_attention_mask"].shape[0]}
        for name, shape in self._unread.items():
            size: tuple[int, ...]
            if name == "encoder_hidden_states":
                size = (rows["encoder"], 0, _size(shape[2], name))
            else:  # past_key_values.{i}.decoder|encoder.key|value: (rows, heads, 0, d_kv)
                size = (rows[name.split(".")[2]], _size(shape[1], name), 0, _size(shape[3], name))
            feed[name] = np.zeros(size, np.float32)
        feed[USE_CACHE_BRANCH] = self._flag
        return self.session.run(output_names or self._output_names, feed, run_options)
