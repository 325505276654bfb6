"""The first decoder step served by the with-past graph and `decoder_cross_kv_model.onnx` (`export.cross_kv`).

`FirstStep(cross_kv, with_past)` has the first-step graph's interface (`run`, `get_inputs`, `get_outputs`, its
outputs in its order): the cross-attention K/V of encoder_hidden_states come from `cross_kv`, then the with-past
graph runs the step on a self-attention past of length 0, one sequence per input. Both sessions hold disjoint
weights, so OnnxT5 loads each decoder weight once, in a graph without branches.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from export.layout import DECODER_WITH_PAST
from export.runtime.sessions import GraphLike, fixed_size


class FirstStep(GraphLike):
    """The first decoder step from two sessions, with the interface of the first-step graph's session."""

    def __init__(self, cross_kv: ort.InferenceSession, with_past: ort.InferenceSession):
        self.cross_kv, self.with_past = cross_kv, with_past
        past = {i.name: i for i in with_past.get_inputs() if i.name.startswith("past_key_values.")}
        cross = {o.name: o for o in cross_kv.get_outputs()}
        own = {o.name: o for o in with_past.get_outputs()}
        layers = len(past) // 4
        if len(cross) != 2 * layers:
            raise ValueError(f"decoder_cross_kv_model.onnx has {len(cross)} outputs where the decoder's {layers} "
                             "layers need a key and a value each; re-export the folder")
        self._outputs = [own["logits"]]
        for i in range(layers):
            self._outputs += [own[f"present.{i}.decoder.key"], own[f"present.{i}.decoder.value"],
                              cross[f"present.{i}.encoder.key"], cross[f"present.{i}.encoder.value"]]
        self._output_names = [o.name for o in self._outputs]
        self._cross_names, self._own_names = list(cross), list(own)
        self._inputs = [i for i in with_past.get_inputs() if not i.name.startswith("past_key_values.")]
        self._inputs += cross_kv.get_inputs()
        # the self-attention past of length 0: (rows, heads, 0, d_kv)
        self._empty = {name: (fixed_size(arg.shape[1], name, DECODER_WITH_PAST),
                              fixed_size(arg.shape[3], name, DECODER_WITH_PAST))
                       for name, arg in past.items() if ".decoder." in name}

    def cross_attention(self, hidden: np.ndarray, run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        """The cross-attention keys and values of `hidden`, one row per input: key, value of each layer in turn."""
        cross = dict(zip(self._cross_names, self.cross_kv.run(self._cross_names, {"encoder_hidden_states": hidden},
                                                              run_options), strict=True))
        layers = len(cross) // 2
        return [cross[f"present.{i}.encoder.{kv}"] for i in range(layers) for kv in ("key", "value")]

    def run(self, output_names: list[str] | None, feed: dict[str, np.ndarray],
            run_options: ort.RunOptions | None = None) -> list[np.ndarray]:
        cross = dict(zip(self._cross_names, self.cross_kv.run(self._cross_names, {
            "encoder_hidden_states": feed["encoder_hidden_states"]}, run_options), strict=True))
        rows = feed["input_ids"].shape[0]
        step = {"input_ids": feed["input_ids"], "encoder_attention_mask": feed["encoder_attention_mask"]}
        for name, (heads, d_kv) in self._empty.items():
            step[name] = np.zeros((rows, heads, 0, d_kv), np.float32)
        for name, value in cross.items():
            step[name.replace("present.", "past_key_values.", 1)] = value
        results = dict(zip(self._own_names, self.with_past.run(self._own_names, step, run_options), strict=True))
        results |= cross
        return [results[name] for name in (output_names or self._output_names)]
