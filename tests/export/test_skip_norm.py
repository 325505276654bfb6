"""Residual additions fused with the RMS norms that read them (`export.skip_norm`): every norm but the first of each
stack, kept fp32 by the fp16 conversion, no residual Add left; a norm without a residual addition left as traced."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from export.precision import fp32_nodes
from export.skip_norm import MS_DOMAIN, fuse_skip_norms


def test_every_norm_after_a_residual_addition_is_fused(exported):
    """The exports the other tests validate against PyTorch: each stack's norms but its first (on the embeddings) are
    one SkipSimplifiedLayerNormalization named after its module, which the fp16 conversion keeps fp32; the residual
    Adds are gone."""
    config = exported.model.config
    expected = {"encoder_model.onnx": 2 * config.num_layers, "decoder_model.onnx": 3 * config.num_decoder_layers,
                "decoder_with_past_model.onnx": 3 * config.num_decoder_layers}
    for name, count in expected.items():
        graph = onnx.load(str(exported.onnx_dir / name), load_external_data=False).graph
        fused = [n for n in graph.node if n.op_type == "SkipSimplifiedLayerNormalization"]
        assert len(fused) == count, name
        assert all(n.domain == MS_DOMAIN and "layer_norm" in n.name.split("/")[-2] for n in fused), name
        assert {n.name for n in fused} <= set(fp32_nodes(graph)), name
        residual = [n for n in graph.node if n.op_type == "Add" and n.name.split("/")[-2].startswith("layer.")]
        assert not residual, (name, [n.name for n in residual])


def _norm_graph(residual: bool):
    """y = T5LayerNorm(a + b) or of a alone, as the trace writes it (Cast, Pow, ReduceMean, Add, Sqrt, Div, Mul,
    Mul), with the sum also an output when there is one."""
    def const(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, np.float32)))

    nodes = [helper.make_node("Add", ["a", "b"], ["sum"])] if residual else []
    x = "x"
    nodes += [helper.make_node("Cast", ["sum" if residual else "a"], [x], to=TensorProto.FLOAT),
              const("two", 2.0), const("eps", 1e-6), const("one", 1.0),
              helper.make_node("Pow", [x, "two"], ["sq"]),
              helper.make_node("ReduceMean", ["sq"], ["ms"], axes=[-1], keepdims=1),
              helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
              helper.make_node("Div", ["one", "rms"], ["inv"]), helper.make_node("Mul", [x, "inv"], ["n"]),
              helper.make_node("Mul", ["w", "n"], ["y"]),
              helper.make_node("Add", [x, "y"], ["next"])]  # the next residual addition reads the sum
    dims = ["rows", "tokens", 8]
    inputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, dims) for k in (["a", "b"] if residual else ["a"])]
    outputs = [helper.make_tensor_value_info(k, TensorProto.FLOAT, dims) for k in ("y", "next")]
    weight = numpy_helper.from_array(np.linspace(0.5, 1.5, 8).astype(np.float32), "w")
    graph = helper.make_graph(nodes, "norm", inputs, outputs, initializer=[weight])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_the_fused_norm_computes_what_the_traced_one_did(tmp_path):
    """One fused node in place of nine; its normalized sum and the sum the next addition reads equal the traced
    graph's outputs to float rounding."""
    path = tmp_path / "norm.onnx"
    onnx.save(_norm_graph(residual=True), str(path))
    rng = np.random.default_rng(0)
    feed = {k: rng.standard_normal((2, 3, 8)).astype(np.float32) for k in ("a", "b")}
    before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    assert fuse_skip_norms(path) == 1
    nodes = onnx.load(str(path)).graph.node
    assert [n.op_type for n in nodes] == ["SkipSimplifiedLayerNormalization", "Add"]
    after = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    for a, b in zip(before, after, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_a_norm_without_a_residual_addition_stays(tmp_path):
    """The first norm of a stack reads the embeddings: nothing to fuse, the file untouched."""
    path = tmp_path / "norm.onnx"
    onnx.save(_norm_graph(residual=False), str(path))
    before = path.read_bytes()
    assert fuse_skip_norms(path) == 0
    assert path.read_bytes() == before
