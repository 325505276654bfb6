"""T5's attention fused into MultiHeadAttention (`export.fuse_attention`): every attention of every graph, the cache
written under its names, and a Softmax that is not T5's attention left as it is."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from export.fuse_attention import MS_DOMAIN, fuse_attention


def _nodes(path):
    return onnx.load(str(path), load_external_data=False).graph.node


def test_every_attention_of_every_graph_is_one_node(exported):
    """The exports the other tests validate against PyTorch (fp32, with padded inputs, beams and several new tokens):
    one MultiHeadAttention per attention, no Softmax or attention MatMul left, the cache outputs written by the
    fused nodes of the with-past graph; T5 does not scale its scores."""
    config = exported.model.config
    expected = {"encoder_model.onnx": config.num_layers, "decoder_model.onnx": 2 * config.num_decoder_layers,
                "decoder_with_past_model.onnx": 2 * config.num_decoder_layers}
    for name, count in expected.items():
        nodes = _nodes(exported.onnx_dir / name)
        fused = [n for n in nodes if n.op_type == "MultiHeadAttention"]
        assert len(fused) == count, name
        assert all(n.domain == MS_DOMAIN for n in fused)
        assert not [n for n in nodes if n.op_type == "Softmax"], name
        for node in fused:
            attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["num_heads"] == config.num_heads and attrs["scale"] == 1.0
    with_past = _nodes(exported.onnx_dir / "decoder_with_past_model.onnx")
    writes = {out for n in with_past if n.op_type == "MultiHeadAttention" for out in n.output}
    assert {f"present.{i}.decoder.{kv}" for i in range(config.num_decoder_layers) for kv in ("key", "value")} <= writes
    assert not [n for n in with_past if n.op_type == "Concat" and n.output[0].startswith("present.")]


def test_a_softmax_that_is_not_an_attention_stays(tmp_path):
    """Scores that come from no q/k projection (a plain MatMul of two inputs) are not rewritten: nothing matches, the
    file is not touched."""
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["b", 2, 3, 4]),
              helper.make_tensor_value_info("c", TensorProto.FLOAT, ["b", 2, 4, 3])]
    nodes = [helper.make_node("MatMul", ["a", "c"], ["s"]), helper.make_node("Softmax", ["s"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "a"], ["out"])]
    graph = helper.make_graph(nodes, "g", inputs, [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    before = path.read_bytes()
    assert fuse_attention(path) == 0
    assert path.read_bytes() == before
    feed = {"a": np.ones((1, 2, 3, 4), np.float32), "c": np.ones((1, 2, 4, 3), np.float32)}
    assert ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)[0].shape == (1, 2, 3, 4)


def test_plain_attention_keeps_standard_ops_and_the_same_tokens(export_of, tmp_path):
    """`--plain-attention` (for runtimes without onnxruntime's contrib ops): no com.microsoft op in any graph, the same
    generated tokens as the fused export, greedy and beam, and export_meta.json says which it is."""
    import json

    from export import OnnxT5
    from export.__main__ import main

    fused = export_of("t5-relu-tied")
    main(["--model", str(fused.model_dir), "--out", str(tmp_path / "plain"), "--plain-attention", "--no-tokenizer"])
    plain = tmp_path / "plain"
    for name in ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx",
                 "decoder_model_merged.onnx"):
        model = onnx.load(str(plain / name), load_external_data=False)
        assert all(o.domain in ("", "ai.onnx") for o in model.opset_import), name
    assert json.loads((plain / "export_meta.json").read_text())["fused_attention"] is False
    assert json.loads((fused.onnx_dir / "export_meta.json").read_text())["fused_attention"] is True
    ids = np.random.default_rng(0).integers(2, fused.model.config.vocab_size, (3, 7))
    for beams in (1, 3):
        kwargs = {"max_new_tokens": 8, "num_beams": beams, "do_sample": False}
        np.testing.assert_array_equal(OnnxT5.from_pretrained(plain).generate(ids, **kwargs),
                                      OnnxT5.from_pretrained(fused.onnx_dir).generate(ids, **kwargs))
