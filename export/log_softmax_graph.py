"""The one-node graph `export/runtime/log_softmax.onnx`, which OnnxT5's beam search runs on each step's logits.

    python -m export.log_softmax_graph      # writes export/runtime/log_softmax.onnx (a test checks it is current)

The runtime imports no `onnx`, so the graph is built here and its bytes ship with the runtime, as package data.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

GRAPH_FILE = Path(__file__).resolve().parent / "runtime" / "log_softmax.onnx"
OPSET = 17  # LogSoftmax over the last axis alone: opset 13 and later


def build() -> onnx.ModelProto:
    """log_probs = LogSoftmax(logits) over the last axis; logits (rows, vocabulary) float32."""
    node = helper.make_node("LogSoftmax", ["logits"], ["log_probs"], axis=-1)
    graph = helper.make_graph(
        [node], "log_softmax", [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["rows", "vocabulary"])],
        [helper.make_tensor_value_info("log_probs", TensorProto.FLOAT, ["rows", "vocabulary"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8,
                              producer_name="t5-fast")
    onnx.checker.check_model(model, full_check=True)
    return model


def main() -> None:
    GRAPH_FILE.write_bytes(build().SerializeToString())
    print(f"wrote {GRAPH_FILE}")


if __name__ == "__main__":
    main()
