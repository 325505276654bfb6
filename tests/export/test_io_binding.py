"""OnnxT5 through IO binding (the cache kept as OrtValues where the graphs run) decodes what the plain path does.

The binding path is the one CUDA takes; here it runs on the CPU provider, where it must not change a single token.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from export import OnnxT5
from export.runtime.binding import Device, device_of
from export.runtime.small_graphs import gather_graph

LENGTHS = [9, 6, 3, 8, 1]  # padded, one row of a single token
KWARGS = {
    "greedy": {"max_new_tokens": 12},
    "greedy-return2-no-repeat": {"max_new_tokens": 10, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
    "beam3": {"num_beams": 3, "max_new_tokens": 10},
    "beam4-return2-lp0.6": {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.6, "max_new_tokens": 10},
    "sample-seeded-return2": {"do_sample": True, "seed": 3, "top_k": 20, "num_return_sequences": 2,
                              "max_new_tokens": 10},
    "beam-sample-seeded": {"num_beams": 3, "do_sample": True, "seed": 5, "max_new_tokens": 8},
}


@pytest.fixture(scope="module", params=["t5-relu-tied", "t5v1.1-gated-untied"])
def pair(request, export_of) -> tuple[OnnxT5, OnnxT5]:
    folder = export_of(request.param).onnx_dir
    return OnnxT5.from_pretrained(folder), OnnxT5.from_pretrained(folder, io_binding=True)


@pytest.mark.parametrize("kwargs", list(KWARGS.values()), ids=list(KWARGS))
def test_binding_decodes_what_the_plain_path_decodes(pair, batch, kwargs, monkeypatch):
    plain, bound = pair
    assert plain.bound is None and bound.bound is not None
    runs = []
    monkeypatch.setattr(bound.decoder_with_past, "run", lambda *a, **k: runs.append(1))  # must not be used
    ids, mask = batch(LENGTHS)
    want = plain.generate(ids, mask, **kwargs)
    got = bound.generate(ids, mask, **kwargs)
    np.testing.assert_array_equal(got, want)
    assert not runs
    assert len(np.unique(want[:, 1:])) > 3


def test_beams_are_reordered_by_the_gather_graph_on_the_cache(pair, batch):
    """Beam search moves the self-attention cache by beam with `take_rows`, which keeps it an OrtValue."""
    _, bound = pair
    assert bound.bound is not None
    seen = []
    take_rows = bound.bound.take_rows
    bound.bound.take_rows = lambda tensors, rows: seen.append((type(tensors[0]), rows.copy())) or take_rows(
        tensors, rows)
    try:
        bound.generate(*batch(LENGTHS), **KWARGS["beam3"])
    finally:
        del bound.bound.take_rows
    assert {kind for kind, _ in seen} == {ort.OrtValue}
    assert any(not np.array_equal(rows, np.sort(rows)) or len(np.unique(rows)) < len(rows) for _, rows in seen)


def test_gather_graph_is_valid_onnx_and_takes_rows():
    model = onnx.load_from_string(gather_graph(2, onnx.TensorProto.FLOAT16, 3))
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(gather_graph(2, onnx.TensorProto.FLOAT16, 3), providers=["CPUExecutionProvider"])
    a = np.arange(24, dtype=np.float16).reshape(4, 2, 3)
    rows = np.array([3, 3, 0], dtype=np.int64)
    out = session.run(None, {"rows": rows, "in0": a, "in1": a + 1})
    np.testing.assert_array_equal(out[0], a[rows])
    np.testing.assert_array_equal(out[1], a[rows] + 1)


def test_encoder_in_chunks_with_binding(tied, batch, monkeypatch):
    from export.runtime import model as rt

    plain = OnnxT5.from_pretrained(tied.onnx_dir)
    ids, mask = batch(LENGTHS)
    want = plain.generate(ids, mask, max_new_tokens=8)
    monkeypatch.setattr(rt, "ENCODER_CHUNK_TOKENS", 18)
    bound = OnnxT5.from_pretrained(tied.onnx_dir, io_binding=True)
    np.testing.assert_array_equal(bound.generate(ids, mask, max_new_tokens=8), want)


def test_binding_is_off_by_default_on_the_cpu_and_follows_the_provider(tied):
    assert OnnxT5.from_pretrained(tied.onnx_dir).bound is None
    assert device_of(["CUDAExecutionProvider", "CPUExecutionProvider"]) == Device("cuda", 0)
    assert device_of([("CUDAExecutionProvider", {"device_id": 1})]) == Device("cuda", 1)
    assert device_of(["OpenVINOExecutionProvider"]) == Device("cpu", 0)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_unavailable_falls_back_to_the_cpu_with_a_warning(tied, batch):
    with pytest.warns(RuntimeWarning, match="CUDAExecutionProvider not available .* running on the CPU provider "
                                            "instead. For CUDA, install onnxruntime-gpu"):
        model = OnnxT5.from_pretrained(tied.onnx_dir, providers=["CUDAExecutionProvider"])
    assert model.encoder.get_providers() == ["CPUExecutionProvider"] and model.bound is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ids, mask = batch(LENGTHS)
        np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=5),
                                      OnnxT5.from_pretrained(tied.onnx_dir).generate(ids, mask, max_new_tokens=5))
