"""fp16 and bf16 graphs: converted from the validated fp32 graphs with `wo`, the residual stream, the layer norms and
the softmax kept in fp32, so that T5's activations above fp16's 65,504 stay finite."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, numpy_helper

from export import OnnxT5
from export.errors import ExportError
from export.layout import DECODER_WITH_PAST, ENCODER, GRAPHS, META_FILE, dtype_name
from export.precision import convert

LENGTHS = [9, 6, 3, 8, 1]
WO_GAIN = 1e5  # the first block's feed-forward output, scaled so that the residual stream passes fp16's 65,504


@pytest.fixture(scope="module")
def overflowing(tmp_path_factory, tiny_t5):
    """A tiny tied T5 whose first encoder and decoder blocks' `wo` push the residual stream above 65,504 (layer norms
    bring it back, as in real t5-large checkpoints), exported with --dtype fp16."""
    from export.exporter import export

    root = tmp_path_factory.mktemp("fp16")
    model = tiny_t5(root / "model", "t5-relu-tied")
    with torch.no_grad():
        for stack in (model.encoder, model.decoder):
            stack.block[0].layer[-1].DenseReluDense.wo.weight *= WO_GAIN
    model.save_pretrained(root / "model")
    export(str(root / "model"), root / "onnx", require_tokenizer=False, dtype="fp16")
    return root


def test_the_residual_stream_passes_fp16_range(overflowing, batch):
    ids, mask = batch(LENGTHS)
    from transformers import T5ForConditionalGeneration

    model = T5ForConditionalGeneration.from_pretrained(overflowing / "model")
    with torch.no_grad():
        states = model.get_encoder()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                     output_hidden_states=True).hidden_states
    assert float(states[1].abs().max()) > 65504  # what fp16 cannot hold


def test_fp16_export_stays_finite_and_agrees_with_fp32(overflowing, batch):
    meta = json.loads((overflowing / "onnx" / META_FILE).read_text())
    precision = meta["precision"]
    assert precision["dtype"] == "fp16" and precision["checked_on"] == "CPUExecutionProvider"
    assert precision["logits_max_abs_diff"] <= precision["tolerance"]
    # the tiny model's large random gains amplify rounding (its weights rounded to fp16 alone move the encoder output
    # by 1.5 %), so some greedy steps flip between near-tied tokens; the t5-large-shaped slow test asks for all
    assert precision["greedy_token_agreement"] >= 0.75
    assert {dtype_name(g, "fp16") for g in GRAPHS} <= set(meta["files"])
    fp16 = OnnxT5.from_pretrained(overflowing / "onnx", dtype="fp16")
    assert fp16.dtype == "fp16" and fp16.decoder_with_past.get_inputs()[2].type == "tensor(float16)"
    ids, mask = batch(LENGTHS)
    logits, _, _ = fp16.first_step(np.zeros((len(LENGTHS), 1), np.int64), mask, fp16.encode(ids, mask))
    assert logits.dtype == np.float32 and np.all(np.isfinite(logits))
    want = OnnxT5.from_pretrained(overflowing / "onnx").generate(ids, mask, max_new_tokens=10)
    assert np.mean(fp16.generate(ids, mask, max_new_tokens=10) == want) >= 0.75


@pytest.mark.skipif("CUDAExecutionProvider" not in ort.get_available_providers(),
                    reason="onnxruntime's CPU provider has no fp16 MatMul/Add kernels: it computes them in fp32, "
                           "casting around the whole run of such ops, so a plain conversion does not overflow there")
def test_a_plain_fp16_conversion_overflows_where_ours_does_not(overflowing, batch):
    """The premise: without the fp32 nodes, the same weights give inf/NaN (on a provider that computes in fp16)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    ids, mask = batch(LENGTHS)
    plain = convert_float_to_float16(onnx.load(str(overflowing / "onnx" / ENCODER)), keep_io_types=True)
    cuda = ["CUDAExecutionProvider"]
    out = ort.InferenceSession(plain.SerializeToString(), providers=cuda).run(
        None, {"input_ids": ids, "attention_mask": mask})[0]
    assert not np.all(np.isfinite(out))
    ours = ort.InferenceSession(str(overflowing / "onnx" / dtype_name(ENCODER, "fp16")), providers=cuda)
    assert np.all(np.isfinite(ours.run(None, {"input_ids": ids, "attention_mask": mask})[0]))


def test_binding_on_fp16_graphs_decodes_the_same(overflowing, batch):
    ids, mask = batch(LENGTHS)
    kwargs = {"num_beams": 3, "max_new_tokens": 8}
    plain = OnnxT5.from_pretrained(overflowing / "onnx", dtype="fp16").generate(ids, mask, **kwargs)
    bound = OnnxT5.from_pretrained(overflowing / "onnx", dtype="fp16", io_binding=True).generate(ids, mask, **kwargs)
    np.testing.assert_array_equal(bound, plain)


def _kept_fp32(path) -> tuple[dict[str, int], set[str]]:
    """Element type of each weight by the node that reads it; names of outputs cast down to fp16/bf16."""
    graph = onnx.load(str(path)).graph
    types = {t.name: t.data_type for t in graph.initializer}
    weights = {node.name: types[i] for node in graph.node if node.op_type == "MatMul" for i in node.input if i in types}
    cast_down = {node.input[0] for node in graph.node if node.op_type == "Cast"
                 and node.attribute[0].i in (TensorProto.FLOAT16, TensorProto.BFLOAT16)}
    producers = {out: node for node in graph.node for out in node.output}
    residual = {producers[name].name for name in cast_down if name in producers}
    return weights, residual


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_wo_and_the_residual_adds_stay_fp32(overflowing, tmp_path, dtype):
    target = tmp_path / dtype_name(DECODER_WITH_PAST, dtype)
    convert(overflowing / "onnx" / DECODER_WITH_PAST, target, dtype)
    weights, cast_down = _kept_fp32(target)
    low = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.BFLOAT16
    wo = [name for name in weights if "/wo/" in name]
    assert wo and all(weights[name] == TensorProto.FLOAT for name in wo)
    assert all(weights[name] == low for name in weights if "/q/" in name)
    assert not [name for name in cast_down if name.split("/")[-2].startswith("layer.") and name.endswith("/Add")]


def test_bf16_weights_are_the_fp32_weights_rounded(overflowing, tmp_path):
    source = overflowing / "onnx" / DECODER_WITH_PAST
    target = tmp_path / "bf16.onnx"
    convert(source, target, "bf16")
    graph = onnx.load(str(target)).graph
    assert not [v.name for v in (*graph.input, *graph.output, *graph.value_info)
                if v.type.tensor_type.elem_type == TensorProto.FLOAT16]
    fp32 = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(source)).graph.initializer}
    bf16 = [t for t in graph.initializer if t.data_type == TensorProto.BFLOAT16]
    assert bf16
    for t in bf16:
        bits = np.frombuffer(t.raw_data, dtype=np.uint16).astype(np.uint32) << 16
        want = torch.from_numpy(fp32[t.name].copy()).bfloat16().float().numpy().ravel()
        np.testing.assert_array_equal(bits.view(np.float32), want)


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA can check bf16 here")
def test_bf16_without_cuda_is_refused_before_any_work(tmp_path):
    from export.exporter import export

    with pytest.raises(ExportError, match=r"no bfloat16 MatMul.*onnxruntime-gpu.*or use --dtype fp16"):
        export(str(tmp_path / "no-model"), tmp_path / "out", dtype="bf16")
    assert not (tmp_path / "out").exists()


def test_a_dtype_export_is_not_silently_dropped(overflowing):
    from export.exporter import check_out

    with pytest.raises(ExportError, match=r"earlier --dtype export .*encoder_model_fp16.onnx"):
        check_out(overflowing / "onnx", int8=False)
    check_out(overflowing / "onnx", int8=False, dtype="fp16")


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"dtype": "fp64"}, ValueError, r"dtype must be one of fp32, fp16, bf16, got 'fp64'"),
    ({"dtype": "fp16", "quantized": True}, ValueError, r"quantized=True .* dtype='fp16' cannot go with it"),
    ({"dtype": "fp16"}, FileNotFoundError, r"holds no fp16 graphs .*`python -m export \.\.\. --dtype fp16"),
    ({"io_binding": "yes"}, TypeError, r"io_binding must be True, False or None"),
])
def test_dtype_and_binding_arguments_are_checked(tied, kwargs, error, match):
    with pytest.raises(error, match=match):
        OnnxT5.from_pretrained(tied.onnx_dir, **kwargs)
