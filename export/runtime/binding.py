"""The decoder steps through onnxruntime's IO binding: the K/V cache and the encoder output stay where the graphs run.

With the plain `session.run`, every step copies the whole cache to numpy and back (on a GPU: device -> host -> device
each step, which is why fastT5's author saw no gain on CUDA). Here each graph's outputs are bound to the provider's
device memory and the previous step's `OrtValue`s are bound as the next step's inputs; only the logits are bound to
host memory (the search and its processors need the full distribution), and the token ids and the mask go up.

Beam search reorders the self-attention cache by beam each step. On the device that is a gather, which
onnxruntime's Python API does not offer, so it runs as a tiny ONNX graph of `Gather` nodes (`gather_graph`) in a
session on the same provider: the cache never leaves the device. The graph is written with the protobuf wire format
by hand, because the runtime does not depend on the `onnx` package (`OnnxT5` needs only numpy and onnxruntime).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

# providers whose sessions take inputs and give outputs in their own device memory, and the OrtDevice type they use;
# any other provider (OpenVINO, CoreML, ...) computes from host memory, so binding keeps the cache in host memory
DEVICE_PROVIDERS = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda", "DmlExecutionProvider": "dml"}
ELEMENT_TYPES = {"tensor(float)": 1, "tensor(float16)": 10, "tensor(bfloat16)": 16, "tensor(int64)": 7}
GATHER_OPSET = 13  # Gather-13: the version every provider implements for float, float16 and bfloat16


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


# ---- a Gather graph, serialized without the onnx package ----------------------------------------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: a varint for an int, length-delimited bytes for bytes, str and embedded messages."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor_value(name: str, element_type: int, rank: int) -> bytes:
    """A ValueInfoProto: the name and a tensor type of `rank` named dimensions."""
    shape = b"".join(_field(1, _field(2, f"{name}_{i}")) for i in range(rank))  # TensorShapeProto.dim.dim_param
    tensor_type = _field(1, element_type) + _field(2, shape)  # TypeProto.Tensor.elem_type, .shape
    return _field(1, name) + _field(2, _field(1, tensor_type))  # ValueInfoProto.name, .type (TypeProto.tensor_type)


def gather_graph(count: int, element_type: int, rank: int) -> bytes:
    """An ONNX model: out{i} = Gather(in{i}, rows, axis=0) for i < count; `rows` int64 (n,), the tensors
    `element_type` of `rank` dimensions."""
    graph = _field(2, "take_rows")  # GraphProto.name
    for i in range(count):  # NodeProto: input 1, output 2, name 3, op_type 4 (Gather's axis defaults to 0)
        graph += _field(1, _field(1, f"in{i}") + _field(1, "rows") + _field(2, f"out{i}") + _field(3, f"gather{i}")
                        + _field(4, "Gather"))
    graph += _field(11, _tensor_value("rows", ELEMENT_TYPES["tensor(int64)"], 1))
    for i in range(count):
        graph += _field(11, _tensor_value(f"in{i}", element_type, rank))
    for i in range(count):
        graph += _field(12, _tensor_value(f"out{i}", element_type, rank))
    opset = _field(1, "") + _field(2, GATHER_OPSET)  # OperatorSetIdProto: domain, version
    return _field(1, 8) + _field(8, opset) + _field(7, graph)  # ModelProto: ir_version 8, opset_import, graph


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
