"""`bench.floor`: the bytes a decoder step reads are counted from the graph as the module says, and the measurement
reports the floor and the time per token of each precision the export has."""

from __future__ import annotations

import statistics

import numpy as np
import pytest

from bench import floor
from distill.models import load_t5
from export.exporter import export
from export.layout import DECODER_WITH_PAST, quantized_name


@pytest.fixture(scope="module")
def tiny_export(tiny_t5_dir, tmp_path_factory):
    return export(str(tiny_t5_dir), tmp_path_factory.mktemp("floor") / "onnx", int8=True)


def test_a_step_reads_the_decoder_but_its_gathered_tables_and_cross_attention_projections(tiny_t5_dir, tiny_export):
    model = load_t5(str(tiny_t5_dir))
    # each parameter is an initializer of its own, equal ones too (a fresh model's layer norms are all ones)
    want = sum(p.numel() * 4 for name, p in model.decoder.named_parameters()
               if "embed_tokens" not in name and "relative_attention_bias" not in name
               and not ("EncDecAttention" in name and name.split(".")[-2] in ("k", "v")))
    want += model.lm_head.weight.numel() * 4  # its own initializer in the graph, though tied to the embedding
    assert floor.step_weight_bytes(tiny_export / DECODER_WITH_PAST) == want
    int8 = floor.step_weight_bytes(tiny_export / quantized_name(DECODER_WITH_PAST))
    assert want / 4 < int8 < want / 2  # int8 matrices, with fp32 norms and scales beside them


def test_measure_reports_each_precision_against_its_floor(tiny_export):
    out = floor.measure(tiny_export, threads=1, input_length=8, new_tokens=4, repeats=2, bandwidth_gib=0.01)
    assert set(out["precisions"]) == {"fp32", "int8"} and out["bandwidth_gb_s"] > 0
    assert len(out["rounds"]) == 2
    for name, p in out["precisions"].items():
        assert p["floor_ms"] == pytest.approx(p["step_weight_mb"] * 1e6 / (out["bandwidth_gb_s"] * 1e9) * 1000)
        # each round's ratio comes from that round's own bandwidth; the report gives their median
        ratios = [r["per_token_ms"][name] / (p["step_weight_mb"] * 1e6 / (r["bandwidth_gb_s"] * 1e9) * 1000)
                  for r in out["rounds"]]
        assert [r["vs_floor"][name] for r in out["rounds"]] == pytest.approx(ratios)
        assert p["vs_floor"] == pytest.approx(statistics.median(ratios))
        assert p["per_token_ms"] == pytest.approx(statistics.median(r["per_token_ms"][name] for r in out["rounds"]))


def test_the_int8_floor_counts_the_graph_the_runtime_steps_on(tiny_export, monkeypatch):
    """With the one-row graph in use (its shared-cache version), "int8" reads its bytes; "int8-tensor" is the int8
    with-past graph's."""
    from export.layout import ONE_ROW_SHARED
    from export.runtime import model as runtime_model

    monkeypatch.setattr(runtime_model, "ONE_ROW_MIN_STEP_BYTES", 0)  # the tiny decoder counts as large
    out = floor.measure(tiny_export, threads=1, input_length=8, new_tokens=4, repeats=1, bandwidth_gib=0.01,
                        int8_tensor=True)
    assert set(out["precisions"]) == {"fp32", "int8", "int8-tensor"}
    mb = {name: p["step_weight_mb"] * 1e6 for name, p in out["precisions"].items()}
    assert mb["int8"] == floor.step_weight_bytes(tiny_export / ONE_ROW_SHARED)
    assert mb["int8-tensor"] == floor.step_weight_bytes(tiny_export / quantized_name(DECODER_WITH_PAST))
    assert mb["int8"] != mb["int8-tensor"]


def test_copies_are_the_graphs_without_the_shared_cache(tiny_export, monkeypatch):
    """--copies: fp32 and int8 again with shared_cache=False, so each step reads the graph the runtime then steps on
    (the one-row graph itself, not its shared-cache version)."""
    from export.layout import ONE_ROW, ONE_ROW_SHARED
    from export.runtime import model as runtime_model

    monkeypatch.setattr(runtime_model, "ONE_ROW_MIN_STEP_BYTES", 0)
    out = floor.measure(tiny_export, threads=1, input_length=8, new_tokens=4, repeats=1, bandwidth_gib=0.01,
                        copies=True)
    assert list(out["precisions"]) == ["fp32", "fp32-copies", "int8", "int8-copies"]
    mb = {name: p["step_weight_mb"] * 1e6 for name, p in out["precisions"].items()}
    assert mb["int8"] == floor.step_weight_bytes(tiny_export / ONE_ROW_SHARED)
    assert mb["int8-copies"] == floor.step_weight_bytes(tiny_export / ONE_ROW)
    assert all(t > 0 for r in out["rounds"] for t in r["per_token_ms"].values())


def test_the_op_profile_counts_every_node_of_a_step_by_type(tiny_export):
    """`bench.op_profile`, which explains the distance to the floor: its node counts per run add up to the nodes
    onnxruntime runs, int8 MatMuls among them, and its shares to the kernel time."""
    from bench.op_profile import profile

    out = profile(tiny_export / quantized_name(DECODER_WITH_PAST), batch=1, past=4, runs=5, warmup=2)
    assert out["nodes"] == pytest.approx(sum(row["nodes"] for row in out["ops"].values()))
    assert out["kernel_ms"] == pytest.approx(sum(row["ms"] for row in out["ops"].values()))
    assert out["nodes"] > 10 and out["run_ms"] > 0
    assert any(("MatMul" in op and "Integer" in op) or op == "DynamicQuantizeMatMul" for op in out["ops"])


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_the_matmul_share_cuts_a_step_down_to_its_weight_matmuls(tiny_export, kind):
    """`bench.matmul_share`, which explains the rest of the distance to the floor: the cut graph holds every weight
    MatMul of the step and reads exactly their weights, and it runs beside the whole step."""
    import onnx

    from bench import matmul_share

    graph = tiny_export / (DECODER_WITH_PAST if kind == "fp32" else quantized_name(DECODER_WITH_PAST))
    full = onnx.load(str(graph))
    inits = {t.name for t in full.graph.initializer}
    want = [n.output[0] for n in full.graph.node
            if n.op_type in matmul_share.WEIGHT_MATMULS and len(n.input) > 1 and n.input[1] in inits]
    cut, _ = matmul_share.matmul_graph(graph)
    assert [o.name for o in cut.graph.output] == want
    out = matmul_share.measure(graph, batch=2, past=3, calls=3, threads=1)
    assert out["matmul_nodes"] == len(want) and out["share"] > 0 and out["step_ms"] > 0
    assert out["weight_mb"] > 0


def test_the_kernel_rate_times_the_exports_formats_of_one_matmul(tmp_path):
    """`bench.kernel_rate`, which explains what `bench.floor` cannot: the one MatMul in the export's four formats
    (made by its own passes) computes the fp32 product within each format's rounding, reads fewer bytes as the
    format shrinks, and is timed beside the probe."""
    import onnx
    import onnxruntime as ort

    from bench import kernel_rate

    paths = kernel_rate.write_graphs(tmp_path, 512, 96)  # two of the 8-bit format's blocks of 256 along K
    ops = {name: {n.op_type for n in onnx.load(str(p)).graph.node} for name, p in paths.items()}
    assert ops["fp32"] == {"MatMul"} and "MatMulInteger" in ops["int8"] and "MatMulNBits" in ops["4-bit"]
    bits = {name: [a.i for n in onnx.load(str(paths[name])).graph.node if n.op_type == "MatMulNBits"
                   for a in n.attribute if a.name == "bits"] for name in ("8-bit blocks", "4-bit")}
    assert bits == {"8-bit blocks": [8], "4-bit": [4]}
    x = {"x": np.random.default_rng(2).standard_normal((1, 1, 512)).astype(np.float32)}
    y = {name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, x)[0]
         for name, p in paths.items()}
    scale = np.abs(y["fp32"]).max()
    assert np.abs(y["int8"] - y["fp32"]).max() < 0.05 * scale and np.abs(y["4-bit"] - y["fp32"]).max() < 0.2 * scale
    assert np.abs(y["8-bit blocks"] - y["fp32"]).max() < 0.05 * scale
    out = kernel_rate.measure(paths, threads=1, calls=2, rounds=1, gib=0.01)
    assert out["bytes"]["fp32"] == 512 * 96 * 4
    assert out["bytes"]["4-bit"] < out["bytes"]["int8"] < out["bytes"]["8-bit blocks"] < out["bytes"]["fp32"]
    assert all(len(v) == 1 and v[0] > 0 for v in out["seconds"].values()) and out["probe"][0] > 0


def test_the_op_profile_runs_the_shared_cache_graph_as_the_runtime_does(tiny_export):
    """The graph OnnxT5 steps on profiles too (it has no fixed-length past to feed): one self-attention appending in
    place per layer."""
    import onnx

    from bench.op_profile import profile
    from export.layout import SHARED_CACHE

    graph = tiny_export / quantized_name(SHARED_CACHE)
    out = profile(graph, batch=1, past=4, runs=5, warmup=2, encoder_length=9)
    layers = sum(i.name.endswith(".decoder.key") for i in onnx.load(str(graph), load_external_data=False).graph.input)
    assert layers > 0 and out["ops"]["DecoderMaskedMultiHeadAttention"]["nodes"] == pytest.approx(layers)
    assert out["nodes"] == pytest.approx(sum(row["nodes"] for row in out["ops"].values()))
