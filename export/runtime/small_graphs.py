"""The runtime's own small ONNX graphs, written with the protobuf wire format by hand: the runtime does not depend on
the `onnx` package (`OnnxT5` needs only numpy and onnxruntime), and these graphs have no weights and a node or a few.

- `gather_graph`: beam search's reorder of the self-attention cache on a device (`binding.py`);
- `log_softmax_graph`: beam search's log-softmax of each step's logits (`log_softmax.py`).
"""

from __future__ import annotations

ELEMENT_TYPES = {"tensor(float)": 1, "tensor(float16)": 10, "tensor(bfloat16)": 16, "tensor(int64)": 7}
GATHER_OPSET = 13  # Gather-13: the version every provider implements for float, float16 and bfloat16
LOG_SOFTMAX_OPSET = 13  # LogSoftmax-13: over one axis, by default the last


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes | str) -> bytes:
    """One protobuf field: a varint for an int (not negative), length-delimited bytes for bytes, str and embedded
    messages."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _tensor_value(name: str, element_type: int, rank: int) -> bytes:
    """A ValueInfoProto: the name and a tensor type of `rank` named dimensions."""
    shape = b"".join(_field(1, _field(2, f"{name}_{i}")) for i in range(rank))  # TensorShapeProto.dim.dim_param
    tensor_type = _field(1, element_type) + _field(2, shape)  # TypeProto.Tensor.elem_type, .shape
    return _field(1, name) + _field(2, _field(1, tensor_type))  # ValueInfoProto.name, .type (TypeProto.tensor_type)


def _node(op_type: str, name: str, inputs: list[str], outputs: list[str]) -> bytes:
    """A NodeProto without attributes: input 1, output 2, name 3, op_type 4."""
    return (b"".join(_field(1, i) for i in inputs) + b"".join(_field(2, o) for o in outputs) + _field(3, name)
            + _field(4, op_type))


def _model(name: str, nodes: list[bytes], inputs: list[bytes], outputs: list[bytes], opset: int) -> bytes:
    """A ModelProto (ir_version 8, the default domain at `opset`) of one graph: nodes 1, name 2, input 11, output 12."""
    graph = (b"".join(_field(1, n) for n in nodes) + _field(2, name) + b"".join(_field(11, i) for i in inputs)
             + b"".join(_field(12, o) for o in outputs))
    opset_id = _field(1, "") + _field(2, opset)  # OperatorSetIdProto: domain, version
    return _field(1, 8) + _field(8, opset_id) + _field(7, graph)  # ModelProto: ir_version, opset_import, graph


def gather_graph(count: int, element_type: int, rank: int) -> bytes:
    """An ONNX model: out{i} = Gather(in{i}, rows, axis=0) for i < count; `rows` int64 (n,), the tensors
    `element_type` of `rank` dimensions."""
    nodes = [_node("Gather", f"gather{i}", [f"in{i}", "rows"], [f"out{i}"]) for i in range(count)]  # axis: 0
    inputs = [_tensor_value("rows", ELEMENT_TYPES["tensor(int64)"], 1)]
    inputs += [_tensor_value(f"in{i}", element_type, rank) for i in range(count)]
    outputs = [_tensor_value(f"out{i}", element_type, rank) for i in range(count)]
    return _model("take_rows", nodes, inputs, outputs, GATHER_OPSET)


def log_softmax_graph() -> bytes:
    """An ONNX model: log_probs = LogSoftmax(logits) over the last axis; float32 (rows, vocabulary)."""
    float32 = ELEMENT_TYPES["tensor(float)"]
    return _model("log_softmax", [_node("LogSoftmax", "log_softmax", ["logits"], ["log_probs"])],
                  [_tensor_value("logits", float32, 2)], [_tensor_value("log_probs", float32, 2)], LOG_SOFTMAX_OPSET)
