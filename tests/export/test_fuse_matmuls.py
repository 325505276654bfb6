"""`export.fuse_matmuls`: the weight MatMuls that read one input become one MatMul and a Split, with the outputs the
graph had, and the source folder untouched."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export.fuse_matmuls import fuse_shared_inputs, shared_input_sets
from export.layout import DECODER_WITH_PAST
from tests.export.conftest import with_past_feed


@pytest.mark.parametrize("name, per_layer", [("t5-relu-tied", ["q_k_v"]),
                                             ("t5v1.1-gated-untied", ["q_k_v", "wi_0_wi_1"])])
def test_shared_inputs_fuse_to_the_same_outputs(export_of, tmp_path, name, per_layer):
    exported = export_of(name)
    source = exported.onnx_dir / DECODER_WITH_PAST
    before = sorted(p.name for p in exported.onnx_dir.iterdir())
    (tmp_path / "fused").mkdir()
    target = tmp_path / "fused" / DECODER_WITH_PAST
    layers = exported.model.config.num_decoder_layers
    assert fuse_shared_inputs(source, target) == layers * len(per_layer)
    graph = onnx.load(str(target), load_external_data=False).graph
    split = {n.input[0] for n in graph.node if n.op_type == "Split"}
    fused = sorted(n.name.split("/")[-2] for n in graph.node if n.op_type == "MatMul" and n.output[0] in split)
    assert fused == sorted(per_layer * layers) and len(split) == layers * len(per_layer)
    assert sorted(p.name for p in exported.onnx_dir.iterdir()) == before  # nothing written beside the source

    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (source, target)]
    feed = with_past_feed(sessions[0], seed=3)
    want, got = (s.run(None, feed) for s in sessions)
    for w, g in zip(want, got, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_kept_modules_and_lone_matmuls_stay(export_of):
    graph = onnx.load(str(export_of("t5v1.1-gated-untied").onnx_dir / DECODER_WITH_PAST),
                      load_external_data=False).graph
    modules = [[n.name.split("/")[-2] for n in nodes] for nodes in shared_input_sets(graph, keep=("wi_1",))]
    assert sorted(map(tuple, modules)) == [("q", "k", "v")] * 2  # wi_0 alone once wi_1 is kept; lm_head, o alone
