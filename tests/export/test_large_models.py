"""What real-size models need, tested on tiny ones: every graph's weights in a data file of its own, int8 defaults
that fit gated-GELU models, and the up-front memory and disk estimate."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from export import OnnxT5
from export.errors import ExportError
from export.exporter import default_keep_fp32, export
from export.layout import GRAPHS, data_name, quantized_name
from export.resources import Needs, graph_bytes, predict, require
from tests.export.conftest import CONFIGS, make_t5, padded_batch


@pytest.fixture(scope="module")
def external_export(tmp_path_factory):
    """The gated, untied model exported with --int8."""
    root = tmp_path_factory.mktemp("external")
    model = make_t5(root / "model", CONFIGS["t5v1.1-gated-untied"])
    out = export(str(root / "model"), root / "onnx", int8=True, require_tokenizer=False)
    return model, out


def test_each_graph_has_one_data_file_of_its_own(external_export):
    _, out = external_export
    names = {p.name for p in out.iterdir()}
    for graph in (*GRAPHS, *map(quantized_name, GRAPHS)):
        assert data_name(graph) in names
        proto = onnx.load(str(out / graph), load_external_data=False)
        locations = {entry.value for t in proto.graph.initializer for entry in t.external_data
                     if entry.key == "location"}
        assert locations == {data_name(graph)}  # one file, the graph's own: never shared, never one per tensor
        assert not [t.name for t in proto.graph.initializer if len(t.raw_data) > 1024]  # the graph holds no weights
        assert (out / data_name(graph)).stat().st_mode & 0o777 == (out / graph).stat().st_mode & 0o777
    assert not [n for n in names if n.startswith(".")]  # no trace or quantizer work folders left behind
    listed = json.loads((out / "export_meta.json").read_text())["files"]
    assert all(data_name(g) in listed for g in GRAPHS)


@pytest.mark.parametrize("quantized", [False, True])
def test_external_export_generates_as_transformers_does(external_export, quantized):
    model, out = external_export
    ids, mask = padded_batch([9, 5, 3], seed=3)
    runtime = OnnxT5.from_pretrained(out, quantized=quantized, verify=True)
    got = runtime.generate(ids, mask, max_new_tokens=8, num_beams=1)
    if quantized:
        assert got.shape[0] == 3  # int8 tokens may differ from fp32; export_meta.json reports the agreement
        return
    with torch.no_grad():
        want = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=8,
                              num_beams=1, do_sample=False).numpy()
    np.testing.assert_array_equal(got, want)
    beams = runtime.generate(ids, mask, max_new_tokens=8, num_beams=3)
    with torch.no_grad():
        want = model.generate(torch.from_numpy(ids), attention_mask=torch.from_numpy(mask), max_new_tokens=8,
                              num_beams=3, do_sample=False).numpy()
    np.testing.assert_array_equal(beams, want)


def test_a_truncated_data_file_is_refused(external_export, tmp_path):
    import shutil

    _, out = external_export
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    data = copy / data_name(GRAPHS[0])  # the encoder: loaded whichever decoder graphs serve
    data.write_bytes(data.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        OnnxT5.from_pretrained(copy)


def test_gated_models_keep_wo_fp32_by_default(external_export, tmp_path):
    model, out = external_export
    int8 = json.loads((out / "export_meta.json").read_text())["int8"]
    assert int8["keep_fp32"] == ["wo"] and int8["keep_fp32_is_default"] is True
    assert int8["excluded_nodes"][GRAPHS[1]] and all("wo" in n.split("/") for n in int8["excluded_nodes"][GRAPHS[1]]
                                                     if n.endswith("MatMul"))
    assert default_keep_fp32(model.config) == ("wo",)
    relu = make_t5(tmp_path / "relu", CONFIGS["t5-relu-tied"])
    assert default_keep_fp32(relu.config) == ()


def test_estimate_grows_with_the_model_and_refuses_before_any_work(tmp_path, monkeypatch):
    from distill.published import parameter_bytes, read_config

    small, large = read_config("mt5-small"), read_config("t5-3b")
    assert predict(large, True, ()).memory > predict(small, True, ()).memory
    needs = predict(small, True, ("wo",))
    assert needs.weights == parameter_bytes(small)
    # every graph holds the embedding; the decoders the output matrix too
    sizes = graph_bytes(small)
    assert sizes["decoder"] > sizes["encoder"] > 4 * small["vocab_size"] * small["d_model"]
    monkeypatch.setattr("export.resources.available_memory", lambda: 10**6)
    with pytest.raises(ExportError, match=r"GB of memory is available.*--no-resource-check"):
        require(Needs(memory=10**9, disk=0, weights=10**8), tmp_path)
    make_t5(tmp_path / "model", CONFIGS["t5-relu-tied"])
    with pytest.raises(ExportError, match="needs"):
        export(str(tmp_path / "model"), tmp_path / "onnx", require_tokenizer=False)
    assert not (tmp_path / "onnx").exists()
