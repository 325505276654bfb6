"""The decoder steps through onnxruntime's IO binding: the K/V cache and the encoder output stay where the graphs run.

With the plain `session.run`, every step copies the whole cache to numpy and back (on a GPU: device -> host -> device
each step, which is why fastT5's author saw no gain on CUDA). Here each graph's outputs are bound to the provider's
device memory and the previous step's `OrtValue`s are bound as the next step's inputs; only the logits are bound to
host memory (the search and its processors need the full distribution), and the token ids and the mask go up.

Beam search reorders the self-attention cache by beam each step. On the device that is a gather, which
onnxruntime's Python API does not offer, so it runs as a tiny ONNX graph of `Gather` nodes
(`small_graphs.gather_graph`) in a session on the same provider: the cache never leaves the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from export.runtime.small_graphs import ELEMENT_TYPES, gather_graph

# providers whose sessions take inputs and give outputs in their own device memory, and the OrtDevice type they use;
# any other provider (OpenVINO, CoreML, ...) computes from host memory, so binding keeps the cache in host memory
DEVICE_PROVIDERS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}


@dataclass(frozen=True)
class Device:
    """Where bound outputs live: an OrtDevice type ("cpu", "cuda", "dml") and its id."""

    kind: str = "cpu"
    id: int = 0


def device_of(providers: list[Any]) -> Device:
    """The device of the first provider of `providers` (a name, or a (name, options) pair with "device_id")."""
    first = providers[0] if providers else "CPUExecutionProvider"
    name, options = first if isinstance(first, tuple) else (first, {})
    kind = DEVICE_PROVIDERS.get(name, "cpu")
    return Device(kind, int(options.get("device_id", 0)) if kind != "cpu" else 0)


# ---- the steps -----------------------------------------------------------------------------------------------------
class BoundSteps:
    """`DecoderSteps` (and `encode`) through IO binding; hidden states and K/V are `OrtValue`s on `device`.

    `encode_on_host` is the plain encoder (chunked rows); it serves inputs too large for one encoder run, whose
    chunks are joined on the host and uploaded once.
    """

    def __init__(self, sessions: tuple[ort.InferenceSession, ort.InferenceSession, ort.InferenceSession],
                 names: tuple[list[str], list[str], list[int], list[int]], device: Device, providers: list[Any],
                 once: ort.RunOptions, rows_per_run: Callable[[int], int],
                 encode_on_host: Callable[[np.ndarray, np.ndarray], np.ndarray]):
        self.encoder, self.decoder, self.decoder_with_past = sessions
        self._self_names, self._cross_names, self._first_self, self._first_cross = names
        self.device = device
        self._providers = providers
        self._once = once
        self._rows_per_run = rows_per_run
        self._encode_on_host = encode_on_host
        self._gathers: dict[tuple[int, int, int], ort.InferenceSession] = {}
        self._mask: tuple[np.ndarray, ort.OrtValue] | None = None  # the last mask and its copy on the device

    def _upload(self, array: np.ndarray) -> ort.OrtValue:
        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device.kind, self.device.id)

    def _device_mask(self, mask: np.ndarray) -> ort.OrtValue:
        """`mask` on the device, uploaded once per generate call (every step of a call passes the same array)."""
        if self._mask is None or self._mask[0] is not mask:
            self._mask = (mask, self._upload(mask))
        return self._mask[1]

    def _run(self, session: ort.InferenceSession, inputs: dict[str, Any], host_outputs: tuple[str, ...],
             options: ort.RunOptions | None = None) -> list[ort.OrtValue]:
        """Run `session` with `inputs` (numpy arrays go up, OrtValues are bound as they are); every output is bound
        to the device except `host_outputs`. Returns the outputs in the session's order."""
        binding = session.io_binding()
        for name, value in inputs.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for out in session.get_outputs():
            on_host = out.name in host_outputs
            binding.bind_output(out.name, "cpu" if on_host else self.device.kind, 0 if on_host else self.device.id)
        session.run_with_iobinding(binding, options)
        return list(binding.get_outputs())

    def encode(self, ids: np.ndarray, mask: np.ndarray) -> ort.OrtValue:
        """The encoder's states on the device."""
        if ids.shape[0] > self._rows_per_run(ids.shape[1]):
            return self._upload(self._encode_on_host(ids, mask))
        return self._run(self.encoder, {"input_ids": ids, "attention_mask": mask}, (), self._once)[0]

    def first_step(self, tokens: np.ndarray, mask: np.ndarray,
                   hidden: Any) -> tuple[np.ndarray, list[ort.OrtValue], list[ort.OrtValue]]:
        out = self._run(self.decoder, {"input_ids": tokens, "encoder_attention_mask": self._device_mask(mask),
                                       "encoder_hidden_states": hidden}, ("logits",), self._once)
        return out[0].numpy()[:, -1, :], [out[i] for i in self._first_self], [out[i] for i in self._first_cross]

    def step(self, tokens: np.ndarray, mask: np.ndarray, own: list[Any],
             cross: list[Any]) -> tuple[np.ndarray, list[ort.OrtValue]]:
        feed: dict[str, Any] = {"input_ids": tokens, "encoder_attention_mask": self._device_mask(mask)}
        feed.update(zip(self._self_names, own, strict=True))
        feed.update(zip(self._cross_names, cross, strict=True))
        out = self._run(self.decoder_with_past, feed, ("logits",))
        return out[0].numpy()[:, -1, :], out[1:]

    def take_rows(self, tensors: list[Any], rows: np.ndarray) -> list[ort.OrtValue]:
        """Row `rows[i]` of each tensor as its row i, gathered on the device by a `gather_graph` session."""
        values = [t if isinstance(t, ort.OrtValue) else self._upload(t) for t in tensors]
        element_type = ELEMENT_TYPES[values[0].data_type()]
        key = (len(values), element_type, len(values[0].shape()))
        if key not in self._gathers:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1  # a copy of rows: more threads only add their start-up
            self._gathers[key] = ort.InferenceSession(gather_graph(*key), options, providers=self._providers)
        feed: dict[str, Any] = {"rows": rows.astype(np.int64, copy=False)}
        feed.update((f"in{i}", v) for i, v in enumerate(values))
        return self._run(self._gathers[key], feed, ())
