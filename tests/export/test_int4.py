"""4-bit graphs (`--int4`): MatMulNBits weights beside int8 embeddings, each graph with its data file, recorded in
export_meta.json, loaded with `quantized="int4"`, and their refusals."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from distill.published import read_config
from export import OnnxT5
from export.__main__ import main, parse_args
from export.errors import ExportError
from export.exporter import check_out, export, load_or_export
from export.int4 import quantize_int4
from export.layout import (
    CROSS_KV,
    DECODER,
    DECODER_MERGED,
    DECODER_WITH_PAST,
    ENCODER,
    FILES_KEY,
    GRAPHS,
    META_FILE,
    USE_CACHE_BRANCH,
    data_name,
    quantized_name,
)
from export.resources import predict
from tests.export.conftest import CONFIGS, make_t5, padded_batch

Q4 = [quantized_name(g, "int4") for g in (*GRAPHS, DECODER_MERGED)]
LENGTHS = [9, 5, 3, 6, 8, 7, 4, 9]


def _initializers(folder, graph) -> dict[str, onnx.TensorProto]:
    return {t.name: t for t in onnx.load(str(folder / graph), load_external_data=False).graph.initializer}


def _nodes(folder, graph, op_type) -> list[onnx.NodeProto]:
    return [n for n in onnx.load(str(folder / graph), load_external_data=False).graph.node if n.op_type == op_type]


@pytest.fixture(scope="module")
def calm(tmp_path_factory):
    """A classic tied T5 with d_model and d_ff multiples of the block size, drawn calmer than the other tiny models
    (gain 1.5): on random weights with the default gains, rounding to 4 bits flips most argmaxes, as it does not on a
    trained model's peaked outputs. Exported (fp32 and 4-bit) by `load_or_export(quantized="int4")`."""
    root = tmp_path_factory.mktemp("int4")
    make_t5(root / "model", CONFIGS["t5-relu-tied"], gain=1.5)
    runtime = load_or_export(root / "model", root / "onnx", quantized="int4", require_tokenizer=False)
    return runtime, root / "onnx"


@pytest.fixture(scope="module")
def gated(tmp_path_factory):
    """The gated, untied model through the command line, with int8, int4 and lm_head int8 in the 4-bit graphs."""
    root = tmp_path_factory.mktemp("int4-gated")
    make_t5(root / "model", CONFIGS["t5v1.1-gated-untied"])
    main(["--model", str(root / "model"), "--out", str(root / "onnx"), "--no-tokenizer", "--int8", "--int4",
          "--int4-keep-int8", "lm_head"])
    return root / "onnx"


def test_each_q4_graph_has_its_data_file_and_is_listed(calm):
    _, out = calm
    files = json.loads((out / META_FILE).read_text())[FILES_KEY]
    for graph in Q4:
        proto = onnx.load(str(out / graph), load_external_data=False)
        locations = {e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"}
        assert locations == {data_name(graph)}
        for name in (graph, data_name(graph)):
            assert files[name]["bytes"] == (out / name).stat().st_size and len(files[name]["sha256"]) == 64
    assert not (out / quantized_name(ENCODER)).exists()  # --int4 alone writes no int8 graphs
    assert (out / data_name(quantized_name(DECODER, "int4"))).stat().st_size < \
        (out / data_name(DECODER)).stat().st_size / 4


def test_weights_are_4_bit_embeddings_int8_position_bias_fp32(calm):
    _, out = calm
    for graph in GRAPHS:
        name = quantized_name(graph, "int4")
        tables = _initializers(out, name)
        nbits = _nodes(out, name, "MatMulNBits")
        assert nbits and all(n.domain == "com.microsoft" for n in nbits)
        attributes = [{a.name: a.i for a in n.attribute} for n in nbits]
        assert all(a["bits"] == 4 and a["block_size"] == 32 and a["accuracy_level"] == 4 for a in attributes)
        assert all(len(n.input) == 4 for n in nbits)  # asymmetric: a zero point per block
        # every MatMul left multiplies two activations (attention scores): no weight stayed fp32
        assert not [n.name for n in _nodes(out, name, "MatMul") if n.input[1] in tables]
        gathers = {n.name: tables.get(n.input[0]) for n in _nodes(out, name, "Gather")}
        embed = [t for node, t in gathers.items() if "embed_tokens" in node.split("/")]
        bias = [t for node, t in gathers.items() if "relative_attention_bias" in node.split("/")]
        assert embed and all(t is not None and t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)
                             for t in embed)
        assert all(t is not None and t.data_type == onnx.TensorProto.FLOAT for t in bias)
        if graph != ENCODER:
            assert any("lm_head" in n.name.split("/") for n in nbits)  # 4-bit unless --int4-keep-int8 lm_head


def test_meta_records_the_settings_and_the_agreement(calm):
    _, out = calm
    meta = json.loads((out / META_FILE).read_text())
    int4 = meta["int4"]
    assert {k: int4[k] for k in ("bits", "block_size", "symmetric", "algorithm", "accuracy_level", "op_types",
                                 "kept_is_default")} == \
        {"bits": 4, "block_size": 32, "symmetric": False, "algorithm": "DEFAULT", "accuracy_level": 4,
         "op_types": ["MatMul"], "kept_is_default": True}
    assert int4["kept"] == {"int8": ["embed_tokens"], "fp32": ["relative_attention_bias"]}
    assert int4["kept_nodes"] == {graph: [] for graph in GRAPHS}
    assert 0.0 <= int4["greedy_token_agreement"] <= 1.0 and int4["new_tokens"] == 16
    assert int4["first_step_logits_max_abs_diff"] > 0  # 4-bit weights do change the logits
    assert meta["int8"] is None


def test_int4_tokens_follow_fp32(calm):
    """Teacher-forced along the fp32 greedy tokens (so that one flip does not derail the rest), the 4-bit graphs'
    argmax agrees with fp32's at most positions; a graph that read its blocks wrongly would agree at about 1/48."""
    runtime, out = calm
    assert runtime.quantized == "int4" and runtime.files[ENCODER] == quantized_name(ENCODER, "int4")
    # each decoder weight once: the with-past graph serves the first step too, beside the cross-attention K/V graph
    assert set(runtime.files.values()) == {quantized_name(g, "int4") for g in (ENCODER, CROSS_KV, DECODER_WITH_PAST)}
    assert runtime.verify()
    fp32 = OnnxT5.from_pretrained(out, threads=1)
    ids, mask = padded_batch(LENGTHS, seed=3)
    want = fp32.generate(ids, mask, max_new_tokens=16, min_new_tokens=16)
    assert len(np.unique(want[:, 1:])) > 3  # the model says more than one thing
    logits = [rt.first_steps(want[:, :-1], mask, rt.encode(ids, mask))[0] for rt in (fp32, runtime)]
    assert np.mean(logits[0].argmax(-1) == logits[1].argmax(-1)) >= 0.6
    beams = runtime.generate(ids, mask, num_beams=2, max_new_tokens=5)
    assert beams.shape[0] == len(LENGTHS) and (beams[:, 0] == 0).all()


def test_merged_q4_decoder_computes_the_first_step_graph(calm, batch):
    """transformers.js loads decoder_model_merged_q4.onnx for dtype "q4"; OnnxT5 loads the two graphs."""
    runtime, out = calm
    ids, mask = batch([5, 3])
    hidden = runtime.encode(ids, mask)
    start = np.zeros((2, 1), dtype=np.int64)
    first = runtime.decoder.run(["logits"], {"input_ids": start, "encoder_attention_mask": mask,
                                             "encoder_hidden_states": hidden})[0]
    merged = ort.InferenceSession(str(out / quantized_name(DECODER_MERGED, "int4")),
                                  providers=["CPUExecutionProvider"])
    feed = {"input_ids": start, "encoder_attention_mask": mask, "encoder_hidden_states": hidden,
            USE_CACHE_BRANCH: np.array([False])}
    heads, d_kv = CONFIGS["t5-relu-tied"]["num_heads"], CONFIGS["t5-relu-tied"]["d_kv"]
    for i in (i.name for i in merged.get_inputs() if i.name.startswith("past_key_values.")):
        feed[i] = np.zeros((2, heads, 0, d_kv), dtype=np.float32)
    np.testing.assert_allclose(merged.run(["logits"], feed)[0], first, atol=1e-5)


def test_gated_model_keeps_wo_fp32_and_lm_head_int8(gated):
    meta = json.loads((gated / META_FILE).read_text())
    int4 = meta["int4"]
    assert int4["kept"] == {"int8": ["embed_tokens", "lm_head"], "fp32": ["relative_attention_bias", "wo"]}
    assert int4["kept_is_default"] is False and meta["int8"]["keep_fp32"] == ["wo"]
    name = quantized_name(DECODER, "int4")
    tables = _initializers(gated, name)
    fp32 = [n.name for n in _nodes(gated, name, "MatMul") if n.input[1] in tables]
    assert fp32 and all("wo" in n.split("/") for n in fp32)
    assert [n.name for n in _nodes(gated, name, "MatMulInteger") if "lm_head" in n.name.split("/")]
    assert not [n.name for n in _nodes(gated, name, "MatMulNBits") if {"wo", "lm_head"} & set(n.name.split("/"))]
    ids, mask = padded_batch([6, 4])
    for quantized, kind in ((True, "int8"), ("int8", "int8"), ("int4", "int4")):
        runtime = OnnxT5.from_pretrained(gated, quantized=quantized, threads=1)
        assert runtime.quantized == kind and runtime.files[ENCODER] == quantized_name(ENCODER, kind)
        assert runtime.generate(ids, mask, max_new_tokens=4).shape[0] == 2


def test_a_folder_without_q4_graphs_names_the_export_command(tied):
    with pytest.raises(FileNotFoundError, match=rf"quantized='int4', but {tied.onnx_dir} holds no int4 graphs "
                                                r".*`python -m export --model MODEL --out .* --int4`"):
        OnnxT5.from_pretrained(tied.onnx_dir, quantized="int4")
    with pytest.raises(TypeError, match=r"quantized must be True or False \(int8 graphs\), or one of 'int8', 'int4', "
                                        r"got 'q4'"):
        OnnxT5.from_pretrained(tied.onnx_dir, quantized="q4")
    with pytest.raises(ValueError, match=r"quantized='int4' loads the int4 graphs.*dtype='fp16'"):
        OnnxT5.from_pretrained(tied.onnx_dir, quantized="int4", dtype="fp16")


def test_bad_block_size_and_options_are_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(ExportError, match=r"--int4-block-size 48: onnxruntime's 4-bit quantizer takes 16, 32, 64, "
                                          r"128, 256"):
        export("no/such-model", tmp_path / "o", int4=True, int4_block_size=48)
    with pytest.raises(ExportError, match="both name lm_head"):
        export("no/such-model", tmp_path / "o", int4=True, int4_keep_fp32=("lm_head",), int4_keep_int8=("lm_head",))
    assert not (tmp_path / "o").exists()
    for argv, message in ((["--int4", "--int4-block-size", "48"], "invalid choice: 48"),
                          (["--int4-block-size", "64"], "--int4-block-size needs --int4"),
                          (["--int4-keep-int8", "lm_head"], "--int4-keep-int8 needs --int4"),
                          (["--int4", "--int4-keep-fp32", ","], "--int4-keep-fp32 names no module")):
        with pytest.raises(SystemExit) as exit_:
            parse_args(["--model", "m", "--out", "o", *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err
    args = parse_args(["--model", "m", "--out", "o", "--int4", "--int4-keep-fp32", "none"])
    assert args.int4_keep_fp32 == () and args.int4_block_size == 32


def test_an_export_without_int4_over_q4_graphs_is_refused(calm):
    _, out = calm
    with pytest.raises(ExportError, match=r"holds the int4 graphs of an earlier --int4 export.*Add --int4"):
        check_out(out, int8=False)
    check_out(out, int8=False, int4=True)


def test_a_kept_name_that_matches_nothing_is_an_error(tied, tmp_path):
    folder = tmp_path / "onnx"
    shutil.copytree(tied.onnx_dir, folder)
    with pytest.raises(ExportError, match=r"--int4-keep-int8 names 'lm_haed'"):
        quantize_int4(folder, keep_int8=("lm_haed",))


def test_estimate_counts_the_4_bit_graphs():
    fields = read_config("mt5-small")
    fp32, int8, int4 = (predict(fields, q == "int8", (), int4=q == "int4") for q in (None, "int8", "int4"))
    assert fp32.disk < int4.disk < int8.disk  # 4-bit weights and int8 embeddings: less than the int8 graphs
    assert int4.memory >= fp32.memory
    assert predict(fields, False, (), int4=True, block_size=16).disk > int4.disk  # more scales and zero points


def test_importing_the_4_bit_quantizer_leaves_the_root_logger_alone():
    """onnxruntime's matmul_nbits_quantizer calls logging.basicConfig(level=INFO) on import: unless undone, every INFO
    record of the process (a line per node of every graph first) would be printed. A fresh process, as a CLI run."""
    import subprocess
    import sys

    code = ("import logging; from export.int4 import _nbits_quantizer; _nbits_quantizer(); root = logging.getLogger(); "
            "print(root.level, len(root.handlers))")
    root = Path(__file__).resolve().parents[2]  # this checkout's `export`
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120,
                          cwd=root)
    assert done.stdout.split() == [str(logging.WARNING), "0"]
