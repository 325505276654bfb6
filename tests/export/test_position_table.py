"""The self-attention biases read from tables (`export.position_table`): the decoder-with-past graph's and the
encoder's outputs equal to the traced bias's bit for bit, at every distance (past the last bucket too, on both sides
for the encoder), with beams, several new tokens and padding; the tables fp32 in the int8 graphs; a graph that is not
T5's left alone."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import export.trace
from export.graphs import graph_specs
from export.layout import DECODER_WITH_PAST, ENCODER
from export.position_table import (
    TABLE,
    bias_table,
    encoder_bias_table,
    read_bias_from_table,
    read_encoder_bias_from_table,
)

FAR = 6  # relative_attention_max_distance of the test model: a short past already reaches the last bucket


def _with_past_inputs(config, rng, rows, beams, past, new, enc_len=5):
    """Random feeds for the with-past graph: `rows` inputs of `beams` sequences each, `past` cached positions."""
    feed = {"input_ids": rng.integers(2, config.vocab_size, (rows * beams, new)),
            "encoder_attention_mask": (np.arange(enc_len)[None, :] < rng.integers(2, enc_len + 1, (rows, 1)))}
    feed["encoder_attention_mask"] = feed["encoder_attention_mask"].astype(np.int64)
    for i in range(config.num_decoder_layers):
        for kind, batch, length in (("decoder", rows * beams, past), ("encoder", rows, enc_len)):
            for kv in ("key", "value"):
                shape = (batch, config.num_heads, length, config.d_kv)
                feed[f"past_key_values.{i}.{kind}.{kv}"] = rng.standard_normal(shape).astype(np.float32)
    return feed


@pytest.fixture(scope="module")
def both(tmp_path_factory, tiny_t5):
    """(model, folder with the table, folder with the traced bias): one tiny model exported twice."""
    root = tmp_path_factory.mktemp("position_table")
    model = tiny_t5(root / "model", "t5v1.1-gated-untied", relative_attention_max_distance=FAR,
                    relative_attention_num_buckets=8)
    folders = root / "table", root / "traced"
    for folder in folders:
        folder.mkdir()
    export.trace.export_graphs(model, folders[0])
    with pytest.MonkeyPatch.context() as patch:  # the same export with the passes left out
        patch.setattr(export.trace, "read_bias_from_table", lambda path, table: 0)
        patch.setattr(export.trace, "read_encoder_bias_from_table", lambda path, table: 0)
        export.trace.export_graphs(model, folders[1])
    return model, *folders


def test_the_table_gives_the_traced_outputs_bit_for_bit(both):
    """One step, a draft of several tokens, beams sharing their input's encoder rows, an empty past and a past longer
    than max_distance: logits and cache equal to the last bit; the trace's bucket arithmetic (its Log) is gone."""
    model, table, traced = both
    nodes = onnx.load(str(table / DECODER_WITH_PAST), load_external_data=False).graph.node
    assert not [n for n in nodes if n.op_type in ("Log", "Where")]
    assert [n for n in nodes if n.op_type == "Gather" and n.input[0] == TABLE]
    sessions = [ort.InferenceSession(str(folder / DECODER_WITH_PAST), providers=["CPUExecutionProvider"])
                for folder in (table, traced)]
    rng = np.random.default_rng(0)
    for rows, beams, past, new in ((1, 1, 3, 1), (2, 3, 4, 1), (2, 1, 2, 4), (1, 2, 0, 3), (2, 1, 3 * FAR, 1),
                                   (1, 1, FAR - 1, 3)):
        feed = _with_past_inputs(model.config, rng, rows, beams, past, new)
        ours, theirs = (s.run(None, feed) for s in sessions)
        for name, a, b in zip(graph_specs(model.config.num_decoder_layers)[DECODER_WITH_PAST].outputs, ours, theirs,
                              strict=True):
            assert np.array_equal(a, b), (rows, beams, past, new, name)


def test_each_column_is_the_bias_at_that_distance(both):
    """Column d of the table is the model's own bias for a query d positions after its key, at every distance up to
    twice max_distance (clipped to the last column past it); the last column is the mask's fill value."""
    model = both[0]
    values = bias_table(model)
    assert values.shape == (1, model.config.num_heads, FAR + 2) and values.dtype == np.float32
    attention = model.get_decoder().block[0].layer[0].SelfAttention
    with torch.no_grad():
        bias = attention.compute_bias(1, 2 * FAR + 1, past_seen_tokens=2 * FAR)[0, :, 0].numpy()  # keys 0..2 FAR
    for key in range(2 * FAR + 1):
        assert np.array_equal(values[0, :, min(2 * FAR - key, FAR)], bias[:, key])
    assert np.all(values[0, :, -1] == np.finfo(np.float32).min)


def test_the_encoder_table_gives_the_traced_states_bit_for_bit(both):
    """Inputs shorter and longer than max_distance on both sides (up to 3x), padded rows among them: the encoder's
    states equal to the last bit; its bucket arithmetic is gone and one Gather reads the table."""
    model, table, traced = both
    nodes = onnx.load(str(table / ENCODER), load_external_data=False).graph.node
    assert not [n for n in nodes if n.op_type in ("Log", "Where", "Abs")]
    assert len([n for n in nodes if n.op_type == "Gather" and n.input[0] == TABLE]) == 1
    sessions = [ort.InferenceSession(str(folder / ENCODER), providers=["CPUExecutionProvider"])
                for folder in (table, traced)]
    rng = np.random.default_rng(1)
    for rows, length in ((1, 1), (2, 3), (3, FAR), (2, FAR + 1), (2, 3 * FAR + 2)):
        ids = rng.integers(2, model.config.vocab_size, (rows, length))
        mask = (np.arange(length)[None, :] < rng.integers(1, length + 1, (rows, 1))).astype(np.int64)
        ours, theirs = (s.run(None, {"input_ids": ids, "attention_mask": mask})[0] for s in sessions)
        assert np.array_equal(ours, theirs), (rows, length)


def test_each_encoder_row_is_the_bias_at_that_distance(both):
    """Row d + max_distance of the encoder's table is the model's own bias for a key d positions after its query
    (before it for d < 0), at every distance up to twice max_distance either way (clipped to the first or last row)."""
    model = both[0]
    values = encoder_bias_table(model)
    assert values.shape == (2 * FAR + 1, model.config.num_heads) and values.dtype == np.float32
    attention = model.get_encoder().block[0].layer[0].SelfAttention
    with torch.no_grad():
        bias = attention.compute_bias(1, 4 * FAR + 1, past_seen_tokens=2 * FAR)[0, :, 0].numpy()  # keys 0..4 FAR
    for key in range(4 * FAR + 1):
        distance = key - 2 * FAR
        assert np.array_equal(values[min(max(distance, -FAR), FAR) + FAR], bias[:, key])


def test_an_encoder_whose_bias_keeps_changing_is_refused(tiny_t5, tmp_path):
    """Buckets that still grow past max_distance (more buckets than distances) cannot come from a table."""
    model = tiny_t5(tmp_path / "model", "t5-relu-tied", relative_attention_max_distance=4,
                    relative_attention_num_buckets=64)
    with pytest.raises(ValueError, match="relative_attention_max_distance=4"):
        encoder_bias_table(model)


def test_the_int8_graph_keeps_the_table_fp32(tmp_path, tiny_t5):
    """The int8 pass quantizes the token embeddings' Gather, not the tables': each stays a float initializer."""
    from export.exporter import export

    tiny_t5(tmp_path / "model", "t5-relu-tied")
    export(str(tmp_path / "model"), tmp_path / "onnx", int8=True, require_tokenizer=False)
    for name in ("decoder_with_past_model_quantized.onnx", "encoder_model_quantized.onnx"):
        graph = onnx.load(str(tmp_path / "onnx" / name), load_external_data=False).graph
        tables = [t for t in graph.initializer if t.name == TABLE]
        assert len(tables) == 1 and tables[0].data_type == TensorProto.FLOAT, name


def test_a_graph_that_is_not_a_t5_decoder_is_left_alone(tmp_path):
    """No MultiHeadAttention on a cache: nothing rewired, the file untouched."""
    x = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["b", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["b", "n"])
    graph = helper.make_graph([helper.make_node("Identity", ["input_ids"], ["y"])], "g", [x], [y])
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    before = path.read_bytes()
    assert read_bias_from_table(path, np.zeros((1, 2, 4), np.float32)) == 0
    assert read_encoder_bias_from_table(path, np.zeros((5, 2), np.float32)) == 0
    assert path.read_bytes() == before
