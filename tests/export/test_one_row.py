"""The one-row int8 graph (`export.one_row`): written with --int8 as 8-bit MatMulNBits blocks, recorded in
export_meta.json, and what OnnxT5 steps one-row calls of the int8 graphs on (and only those) above a decoder size."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import OnnxT5
from export.exporter import export
from export.fuse_attention import grouping
from export.layout import (
    CROSS_KV,
    DECODER_WITH_PAST,
    ENCODER,
    FILES_KEY,
    ONE_ROW,
    ONE_ROW_SHARED,
    data_name,
    quantized_name,
)
from export.one_row import BITS, BLOCK_SIZE
from tests.export.conftest import with_past_feed

GREEDY = {"num_beams": 1, "do_sample": False, "max_new_tokens": 8, "min_new_tokens": 8}


@pytest.fixture(scope="module")
def int8_export(tied, tmp_path_factory):
    return export(str(tied.model_dir), tmp_path_factory.mktemp("one_row") / "onnx", int8=True,
                  require_tokenizer=False)


@pytest.fixture
def stepping(monkeypatch):
    """Every decoder counts as large enough for the one-row graph (the tiny models' are far below the threshold)."""
    from export.runtime import model as runtime_model

    monkeypatch.setattr(runtime_model, "ONE_ROW_MIN_STEP_BYTES", 0)


def test_the_graph_is_8_bit_blocks(int8_export):
    graph = onnx.load(str(int8_export / ONE_ROW), load_external_data=False).graph
    ops = [n.op_type for n in graph.node]
    blocks = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert blocks and "MatMulInteger" not in ops and "DynamicQuantizeLinear" not in ops
    assert all(a.i == BITS for n in blocks for a in n.attribute if a.name == "bits")
    assert all(a.i == BLOCK_SIZE for n in blocks for a in n.attribute if a.name == "block_size")
    weights = [n for n in graph.node if n.op_type == "MatMul" and n.input[1] in {t.name for t in graph.initializer}]
    assert not weights  # every weight MatMul is a block MatMul (no module kept fp32 for a relu model)
    meta = json.loads((int8_export / "export_meta.json").read_text())
    one_row = meta["int8"]["one_row"]
    assert (one_row["file"], one_row["bits"], one_row["block_size"]) == (ONE_ROW, BITS, BLOCK_SIZE)
    # each self-attention's q, k and v as one block MatMul (`export.fuse_matmuls`)
    layers = json.loads((int8_export / "config.json").read_text())["num_decoder_layers"]
    assert one_row["fused_matmul_sets"] == layers == ops.count("Split")
    assert sum(n.name.split("/")[-2] == "q_k_v" for n in blocks) == layers
    assert 0.0 <= one_row["greedy_token_agreement"] <= 1.0 and one_row["rows"] >= 1
    assert {ONE_ROW, data_name(ONE_ROW)} <= set(meta[FILES_KEY])
    # one input, one row: the cross-attentions' grouping Reshapes are gone (`export.fuse_attention.ungroup`)
    int8 = onnx.load(str(int8_export / quantized_name(DECODER_WITH_PAST)), load_external_data=False).graph
    assert any(grouping(n) for n in int8.node) and not any(grouping(n) for n in graph.node)


def test_its_step_computes_what_the_fp32_step_does(int8_export):
    """The rewrites (q, k and v as one, ungrouped, 8-bit blocks) keep the step's function: its logits and new cache
    follow the fp32 graph's on one row, within what 8-bit weights move them."""
    sessions = [ort.InferenceSession(str(int8_export / name), providers=["CPUExecutionProvider"])
                for name in (DECODER_WITH_PAST, ONE_ROW)]
    feed = with_past_feed(sessions[0], seed=5)
    for want, got in zip(*(s.run(None, feed) for s in sessions), strict=True):
        assert got.shape == want.shape
        assert np.corrcoef(want.ravel(), got.ravel())[0, 1] > 0.99  # 0.998-0.9999 here; a misrouted tensor: ~0


def by_hand(folder, ids, mask, steps):
    """Greedy tokens of one row from the int8 encoder and cross-attention K/V graphs and the one-row graph, run
    directly: the first step on an empty self-attention past, then one token at a time."""
    def session(name):
        return ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"])

    hidden = session(quantized_name(ENCODER)).run(None, {"input_ids": ids, "attention_mask": mask})[0]
    cross_kv = session(quantized_name(CROSS_KV))
    cross = dict(zip([o.name for o in cross_kv.get_outputs()],
                     cross_kv.run(None, {"encoder_hidden_states": hidden}), strict=True))
    step = session(ONE_ROW)
    feed = {name.replace("present.", "past_key_values.", 1): value for name, value in cross.items()}
    for arg in step.get_inputs():
        if ".decoder." in arg.name:
            feed[arg.name] = np.zeros((1, arg.shape[1], 0, arg.shape[3]), np.float32)
    config = json.loads((folder / "config.json").read_text())
    tokens = [config["decoder_start_token_id"]]
    names = [o.name for o in step.get_outputs()]
    for _ in range(steps):
        out = dict(zip(names, step.run(None, {**feed, "input_ids": np.array([tokens[-1:]]),
                                              "encoder_attention_mask": mask}), strict=True))
        logits = out["logits"][0, -1]
        logits[config["eos_token_id"]] = -np.inf  # min_new_tokens: no EOS before the last step
        tokens.append(int(np.argmax(logits)))
        feed |= {n.replace("present.", "past_key_values.", 1): v for n, v in out.items() if ".decoder." in n}
    return np.array([tokens])


@pytest.mark.parametrize("in_place", [False, True], ids=["copies", "shared-cache"])
def test_one_row_calls_step_on_it(int8_export, batch, stepping, in_place):
    """On the one-row graph, or (the default) on its shared-cache version, whose attention kernel rounds its own
    way: on this model its tokens are the one-row graph's all the same."""
    model = OnnxT5.from_pretrained(int8_export, quantized="int8", search_graph=False, shared_cache=in_place)
    steps = model.one_row_shared if in_place else model.one_row
    assert steps is not None and steps.session is None  # opened by the first call it serves
    assert (model.one_row_shared, model.one_row)[in_place] is None  # one of the two
    ids, mask = batch([5, 9], seed=2)
    model.generate(ids, mask, **GREEDY)  # two rows: the int8 with-past graph (or its shared-cache one)
    model.generate(ids[:1, :5], mask[:1, :5], **{**GREEDY, "num_beams": 2})  # two beams: the same
    assert steps.session is None
    for i, length in enumerate((5, 9)):
        got = model.generate(ids[i:i + 1, :length], mask[i:i + 1, :length], **GREEDY)
        np.testing.assert_array_equal(got, by_hand(int8_export, ids[i:i + 1, :length], mask[i:i + 1, :length], 8))
    assert steps.session is not None
    if in_place:
        assert ONE_ROW_SHARED in model.verify()


def unused(model):
    return model.one_row is None and model.one_row_shared is None


def test_which_loads_use_it(int8_export, tmp_path, batch, stepping):
    assert unused(OnnxT5.from_pretrained(int8_export, quantized="int8", one_row_graph=False))
    assert unused(OnnxT5.from_pretrained(int8_export))  # fp32: the int8 graphs' steps only
    with pytest.raises(TypeError, match="one_row_graph must be True or False"):
        OnnxT5.from_pretrained(int8_export, quantized="int8", one_row_graph="yes")
    # an export without the shared-cache version (made before it existed) steps one-row calls on the one-row graph
    older = tmp_path / "older"
    shutil.copytree(int8_export, older)
    (older / ONE_ROW_SHARED).unlink()
    model = OnnxT5.from_pretrained(older, quantized="int8", search_graph=False)
    assert model.one_row is not None and model.one_row_shared is None
    # one without the one-row graph either loads, and steps every call on the int8 graph
    for name in (ONE_ROW, data_name(ONE_ROW)):
        (older / name).unlink()
    model = OnnxT5.from_pretrained(older, quantized="int8", search_graph=False)
    assert unused(model)
    ids, mask = batch([6], seed=1)
    assert model.generate(ids, mask, **GREEDY).shape == (1, 9)


def test_small_decoders_keep_the_int8_graph(int8_export):
    """Below ONE_ROW_MIN_STEP_BYTES a step is its nodes' fixed costs, where the block kernel gained nothing."""
    assert unused(OnnxT5.from_pretrained(int8_export, quantized="int8"))


def test_its_files_are_checked(int8_export, tmp_path, stepping):
    changed = tmp_path / "changed"
    shutil.copytree(int8_export, changed)
    with open(changed / data_name(ONE_ROW), "ab") as f:
        f.write(b"\0")
    with pytest.raises(ValueError, match=data_name(ONE_ROW)):
        OnnxT5.from_pretrained(changed, quantized="int8")
    assert unused(OnnxT5.from_pretrained(changed, quantized="int8", one_row_graph=False))


def test_the_search_graph_is_checked_against_the_int8_graphs_loop(int8_export, stepping, monkeypatch):
    """The int8 search graph holds the int8 with-past graph: its tokens are compared with the loop on that graph,
    not with one-row calls stepped on the one-row graph (8-bit blocks give other tokens on real models)."""
    from transformers import T5Config

    from export.layout import SEARCH
    from export.runtime.one_row import OneRow
    from export.search_graph import search_agreement
    from export.validate import Validation

    def refused(self, cross_kv):
        raise AssertionError("the search graph's check stepped on the one-row graph")

    monkeypatch.setattr(OneRow, "sessions", refused)
    config = T5Config.from_pretrained(int8_export)
    assert search_agreement(int8_export, "int8", quantized_name(SEARCH), Validation(), config) == []
