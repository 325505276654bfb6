"""The export: optimum's file and IO names, validation before anything is kept, int8, the command line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnxruntime as ort
import pytest
import torch

from distill.errors import ModelError
from export import OnnxT5
from export.__main__ import main
from export.errors import ExportError
from export.exporter import export
from export.graphs import DecoderWithPastGraph, graph_specs
from export.layout import DECODER_WITH_PAST
from export.position_table import TABLE as POSITION_TABLE
from export.quantize import quantize
from export.surgery import drop_single_input_concats

GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


def test_folder_has_optimum_names_and_a_complete_meta(exported):
    folder = exported.onnx_dir
    layers = exported.model.config.num_decoder_layers
    assert {p.name for p in folder.iterdir()} >= {*GRAPHS, "config.json", "generation_config.json",
                                                  "export_meta.json"}
    kv = [f"{i}.{part}.{t}" for i in range(layers) for part in ("decoder", "encoder") for t in ("key", "value")]
    own = [f"{i}.decoder.{t}" for i in range(layers) for t in ("key", "value")]
    expected = {
        "encoder_model.onnx": (["input_ids", "attention_mask"], ["last_hidden_state"]),
        "decoder_model.onnx": (["input_ids", "encoder_attention_mask", "encoder_hidden_states"],
                               ["logits", *(f"present.{n}" for n in kv)]),
        "decoder_with_past_model.onnx": (["input_ids", "encoder_attention_mask",
                                          *(f"past_key_values.{n}" for n in kv)],
                                         ["logits", *(f"present.{n}" for n in own)]),
        # optimum's merged names: both steps' inputs and use_cache_branch, the first step's outputs
        "decoder_model_merged.onnx": (["input_ids", "encoder_attention_mask", "encoder_hidden_states",
                                       *(f"past_key_values.{n}" for n in kv), "use_cache_branch"],
                                      ["logits", *(f"present.{n}" for n in kv)]),
        # the first step's cross-attention K/V alone, cut out of decoder_model.onnx
        "decoder_cross_kv_model.onnx": (["encoder_hidden_states"],
                                        [f"present.{n}" for n in kv if ".encoder." in n]),
    }
    for graph, (inputs, outputs) in expected.items():
        sess = ort.InferenceSession(str(folder / graph), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == inputs
        assert [o.name for o in sess.get_outputs()] == outputs
        spec = graph_specs(layers)[graph]
        assert (list(spec.inputs), list(spec.outputs)) == (inputs, outputs)

    meta = json.loads((folder / "export_meta.json").read_text())
    assert meta["opset"] == 17 and meta["versions"]["onnxruntime"] == ort.__version__
    tied = exported.model.lm_head.weight is exported.model.shared.weight
    assert meta["model"]["lm_head_is_shared_embedding"] is tied
    assert meta["model"]["scale_decoder_outputs"] is tied  # v1.1 / flan: no d_model ** -0.5 before lm_head
    diffs = meta["validation"]["max_abs_diff"]
    merged = [f"decoder_model_merged.onnx ({g} branch)" for g in ("decoder_model", "decoder_with_past_model")]
    served = "decoder_cross_kv_model.onnx + decoder_with_past_model.onnx (first step)"
    assert set(diffs) == {*GRAPHS, *merged, served}  # both merged branches and OnnxT5's first step checked too
    assert all(diffs[m]["logits"] < 1e-4 for m in (*merged, served))
    assert diffs["decoder_model.onnx"]["logits"] < 1e-4 and diffs["decoder_with_past_model.onnx"]["logits"] < 1e-4
    assert meta["validation"]["batch"] >= 3 and meta["validation"]["first_decoder_length"] > 1
    graphs = [*GRAPHS, "decoder_model_merged.onnx", "decoder_cross_kv_model.onnx"]
    # each graph's weights in a file of its own; the search and shared-cache graphs' are those of the graphs they run
    assert set(meta["file_bytes"]) == {*graphs, *(f"{g}_data" for g in graphs), "search_model.onnx",
                                       "decoder_shared_cache_model.onnx"}
    # every weight of the with-past graph is one of the first step's: the merged graph holds no more bytes (fewer
    # when tensors are equal, as a fresh model's all-ones layer norms are: it keeps those once)
    assert 0 < meta["file_bytes"]["decoder_model_merged.onnx_data"] <= meta["file_bytes"]["decoder_model.onnx_data"]
    assert all(size > 0 for size in meta["file_bytes"].values())
    assert meta["int8"] is None


def test_merged_decoder_computes_the_logits_once_after_its_branches(exported):
    """lm_head's MatMul is hoisted out of the If: onnxruntime would prepack its weight once per branch."""
    import onnx

    graph = onnx.load(str(exported.onnx_dir / "decoder_model_merged.onnx"), load_external_data=False).graph
    weights = {t.name for t in graph.initializer}
    top = [n for n in graph.node if n.op_type == "MatMul"]
    assert [n.output[0] for n in top] == ["logits"] and top[0].input[1] in weights
    (if_node,) = [n for n in graph.node if n.op_type == "If"]
    assert if_node.output[0] == top[0].input[0]
    for branch in (a.g for a in if_node.attribute):
        assert not any(top[0].input[1] in n.input for n in branch.node)  # no branch reads the lm_head weight
        assert "logits" not in {o.name.split("/")[-1] for o in branch.output}


def test_cross_kv_graph_holds_what_the_with_past_graph_lacks_and_nothing_else(exported):
    """OnnxT5 serves the first step from decoder_cross_kv_model.onnx and the with-past graph: together they hold the
    first-step graph's weights, each once."""
    import onnx

    def weights(name: str) -> dict[str, int]:
        graph = onnx.load(str(exported.onnx_dir / name), load_external_data=False).graph
        return {t.name: int(np.prod(t.dims)) for t in graph.initializer if len(t.dims) >= 2}

    cross, with_past, first = (weights(g) for g in ("decoder_cross_kv_model.onnx", "decoder_with_past_model.onnx",
                                                     "decoder_model.onnx"))
    layers = exported.model.config.num_decoder_layers
    assert len(cross) == 2 * layers  # a key and a value projection per layer
    # the with-past graph reads its position bias from a table made of the first step's bias embedding
    assert with_past.pop(POSITION_TABLE) > 0
    bias = [name for name in first if "relative_attention_bias" in name]
    assert len(bias) == 1
    assert sum(cross.values()) + sum(with_past.values()) == sum(first.values()) - first[bias[0]]


def test_failed_validation_names_graph_and_output_and_leaves_nothing(tied, tmp_path, monkeypatch):
    forward = DecoderWithPastGraph.forward

    def corrupted(self, *args):
        logits, *rest = forward(self, *args)
        return (logits + 1e-2, *rest)

    monkeypatch.setattr(DecoderWithPastGraph, "forward", corrupted)
    out = tmp_path / "exports" / "onnx"
    with pytest.raises(ExportError, match=r"decoder_with_past_model\.onnx: output 'logits' differs from PyTorch by "
                                          r"0\.01"):
        export(str(tied.model_dir), out)
    assert not out.exists()
    assert list((tmp_path / "exports").iterdir()) == []  # the staging folder is gone too


def test_refuses_other_architectures_and_foreign_folders(tied, tmp_path):
    from transformers import BartConfig

    BartConfig(d_model=16, encoder_layers=1, decoder_layers=1, vocab_size=32).save_pretrained(tmp_path / "bart")
    with pytest.raises(ModelError, match="'bart' model"):
        export(str(tmp_path / "bart"), tmp_path / "out")
    with pytest.raises(ExportError, match="not an earlier export"):
        export(str(tied.model_dir), tied.model_dir)  # would replace the model folder itself
    with pytest.raises(ModelError, match="does not exist"):
        export(str(tmp_path / "missing"), tmp_path / "out")


def test_command_end_to_end_with_tokenizer_and_int8(tmp_path, tokenizer_dir, tiny_t5):
    """`python -m export --int8 --int8-keep-fp32 lm_head,wo` on a v1.1-style model with a tokenizer: text in and out."""
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json")).get_vocab_size()
    model_dir = tmp_path / "model"
    model = tiny_t5(model_dir, "t5v1.1-gated-untied", vocab_size=vocab)
    for name in ("tokenizer.json", "tokenizer_config.json", "spiece.model"):
        shutil.copy(tokenizer_dir / name, model_dir / name)
    out = tmp_path / "onnx"
    main(["--model", str(model_dir), "--out", str(out), "--int8", "--int8-keep-fp32", "lm_head,wo"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "onnx"]  # the staging folder is gone

    assert all((out / name.replace(".onnx", "_quantized.onnx")).is_file() for name in GRAPHS)
    assert (out / "tokenizer.json").is_file() and (out / "spiece.model").is_file()
    meta = json.loads((out / "export_meta.json").read_text())
    assert meta["command"].startswith("python -m export --model")
    int8 = meta["int8"]
    assert int8["op_types_to_quantize"] == ["MatMul", "Gather"] and int8["keep_fp32"] == ["lm_head", "wo"]
    kept = int8["excluded_nodes"]["decoder_with_past_model.onnx"]
    assert any("/lm_head/" in node for node in kept) and any("/wo/" in node for node in kept)
    assert any("/relative_attention_bias/" in node for node in kept)  # 32 x heads: nothing to gain, error to lose
    import onnx

    for graph in GRAPHS:  # the token embedding is read from an 8-bit table: a quarter of its fp32 memory
        proto = onnx.load(str(out / graph.replace(".onnx", "_quantized.onnx")))
        tables = {t.name: t.data_type for t in proto.graph.initializer}
        embed = [n for n in proto.graph.node if n.op_type == "Gather" and "embed_tokens" in n.name]
        assert embed and all(tables.get(n.input[0]) in (onnx.TensorProto.UINT8, onnx.TensorProto.INT8)
                             for n in embed)
    assert 0.0 <= int8["greedy_token_agreement"] <= 1.0 and int8["new_tokens"] > 0

    runtime = OnnxT5.from_pretrained(out, threads=1)
    tok = runtime.tokenizer
    tok.enable_padding(pad_id=0, pad_token="<pad>")
    encoded = tok.encode_batch(["translate English to French: the lord said unto moses", "the king"])
    ids = np.array([e.ids for e in encoded])
    mask = np.array([e.attention_mask for e in encoded])
    assert (mask == 0).any()  # a padded batch
    got = runtime.generate(ids, mask, num_beams=2, max_new_tokens=6)
    with torch.no_grad():
        want = model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), num_beams=2,
                              max_new_tokens=6).numpy()
    np.testing.assert_array_equal(got, want)
    assert all(isinstance(text, str) for text in tok.decode_batch(got.tolist(), skip_special_tokens=True))

    quantized = OnnxT5.from_pretrained(out, quantized=True, threads=1).generate(ids, mask, max_new_tokens=6)
    assert quantized.dtype == np.int64 and quantized.shape[0] == 2 and (quantized[:, 0] == 0).all()
    with pytest.raises(ValueError, match="tokenizer does not match"):
        runtime.generate(ids + vocab, mask)


def test_keep_fp32_name_that_matches_nothing_is_an_error(tied, tmp_path):
    folder = tmp_path / "onnx"
    shutil.copytree(tied.onnx_dir, folder)
    with pytest.raises(ExportError, match="'lm_haed'"):
        quantize(folder, ("lm_haed",))


def test_command_line_errors(capsys):
    with pytest.raises(SystemExit):
        main(["--model", "m", "--out", "o", "--int8-keep-fp32", "lm_head"])
    assert "needs --int8" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "m", "--out", "o", "--opset", "13"])
    assert "opset 14" in capsys.readouterr().err


def test_graphs_copy_nothing_for_nothing(exported):
    """No Concat of one input (a copy: the cached cross-attention K/V were copied at every step) in any graph, and
    the per-step graph builds nothing of d_model width from the mask (it expanded one at every step)."""
    import onnx

    for graph in GRAPHS:
        nodes = onnx.load(str(exported.onnx_dir / graph), load_external_data=False).graph.node
        assert not [n.name for n in nodes if n.op_type == "Concat" and len(n.input) == 1]
    nodes = onnx.load(str(exported.onnx_dir / DECODER_WITH_PAST), load_external_data=False).graph.node
    assert not [n.name for n in nodes if n.op_type == "Expand" and not n.name.startswith("/model/decoder/")]


def test_drop_single_input_concats_keeps_what_the_graph_computes(tmp_path):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [2, 3]) for name in ("y", "z", "w")]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Concat", ["r"], ["c"], axis=0, name="inner"),  # read by a node: rewired
             helper.make_node("Neg", ["c"], ["y"], name="neg"),
             helper.make_node("Concat", ["r"], ["z"], axis=0, name="to_output"),  # a graph output: written by Relu
             helper.make_node("Concat", ["x"], ["w"], axis=1, name="input_to_output")]  # input -> output: Identity
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 17)]),
              path)
    feed = {"x": np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], dtype=np.float32)}
    want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    assert drop_single_input_concats(path) == 2
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node] == ["Relu", "Neg", "Identity"]
    assert [o.name for o in proto.graph.output] == ["y", "z", "w"]
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g, w)
