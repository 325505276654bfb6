"""Reshape targets built from constants and graph-input dims (`export.static_shapes`), on a hand-built graph and on the
exported ones."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from export.static_shapes import static_reshapes

GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


def _traced_like(path):
    """What the trace writes for `x.view(batch, length, 3, 4)` and `y.view(groups, -1, 12)`: targets computed from
    runtime shapes, one of them from another input's (`mask`'s) first dim."""
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "length", 12]),
              helper.make_tensor_value_info("mask", TensorProto.INT64, ["groups", "columns"])]
    const = {"zero": [0], "one": [1], "three": [3], "four": [4], "minus": [-1], "twelve": [12]}
    nodes = [helper.make_node("Constant", [], [name], value=helper.make_tensor(name + "_t", TensorProto.INT64, [1], v))
             for name, v in const.items()]
    nodes += [helper.make_node("Shape", ["x"], ["sx"]),
              helper.make_node("Gather", ["sx", "zero"], ["b"], axis=0),
              helper.make_node("Gather", ["sx", "one"], ["n"], axis=0),
              helper.make_node("Concat", ["b", "n", "three", "four"], ["target1"], axis=0),
              helper.make_node("Reshape", ["x", "target1"], ["y"]),
              helper.make_node("Neg", ["y"], ["out1"]),
              helper.make_node("Shape", ["mask"], ["sm"]),
              helper.make_node("Gather", ["sm", "zero"], ["g"], axis=0),
              helper.make_node("Concat", ["g", "minus", "twelve"], ["target2"], axis=0),
              helper.make_node("Reshape", ["x", "target2"], ["out2"])]
    outputs = [helper.make_tensor_value_info("out1", TensorProto.FLOAT, None),
               helper.make_tensor_value_info("out2", TensorProto.FLOAT, None)]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(path, feed):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_targets_become_constants_and_input_dims_with_the_same_results(tmp_path):
    path = tmp_path / "g.onnx"
    _traced_like(path)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((b, n, 12)).astype(np.float32), "mask": np.ones((g, 5), dtype=np.int64)}
             for b, n, g in ((2, 3, 1), (4, 1, 2), (6, 5, 3))]
    want = [_run(path, feed) for feed in feeds]
    assert static_reshapes(path) == 2
    graph = onnx.load(str(path)).graph
    # x's shape chain is gone (its dims are Reshape's 0s); mask's first dim is read by one Shape and one Gather
    assert [n.op_type for n in graph.node if n.op_type in ("Shape", "Gather", "Concat")] == ["Shape", "Gather",
                                                                                            "Concat"]
    assert [n.input[0] for n in graph.node if n.op_type == "Shape"] == ["mask"]
    assert not graph.initializer  # targets are Constant nodes, as the trace writes them: no weight to count
    targets = {n.output[0]: onnx.numpy_helper.to_array(n.attribute[0].t).tolist() for n in graph.node
               if n.op_type == "Constant"}
    reshapes = [n for n in graph.node if n.op_type == "Reshape"]
    assert targets[reshapes[0].input[1]] == [0, 0, 3, 4]
    concat = next(n for n in graph.node if n.op_type == "Concat")
    assert reshapes[1].input[1] == concat.output[0] and targets[concat.input[1]] == [-1, 12]
    for feed, expected in zip(feeds, want, strict=True):
        for got, exp in zip(_run(path, feed), expected, strict=True):
            np.testing.assert_array_equal(got, exp)
    assert static_reshapes(path) == 0  # nothing computed is left to rewrite


def test_exported_graphs_compute_no_target_from_an_intermediate_shape(exported):
    """In every exported graph, each Reshape target is constant or reads only graph inputs' shapes: no per-layer
    Shape/Gather/Unsqueeze/Concat chain is left (the traced graphs had one per view in every attention)."""
    for name in GRAPHS:
        graph = onnx.load(str(exported.onnx_dir / name), load_external_data=False).graph
        producer = {out: node for node in graph.node for out in node.output}
        inputs = {i.name for i in graph.input}
        for reshape in (n for n in graph.node if n.op_type == "Reshape"):
            stack, seen = [reshape.input[1]], set()
            while stack:
                node = producer.get(stack.pop())
                if node is None or node.name in seen:
                    continue
                seen.add(node.name)
                if node.op_type == "Shape":
                    assert node.input[0] in inputs, (name, reshape.name, node.input[0])
                    continue
                stack.extend(node.input)
