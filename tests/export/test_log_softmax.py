"""Beam search's log-softmax in onnxruntime: a valid ONNX graph, written without the onnx package, that computes what
torch computes, the same bit for bit with subnormals flushed to zero."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from export.runtime.log_softmax import LogSoftmax
from export.runtime.small_graphs import log_softmax_graph
from export.runtime.subnormals import available


def test_the_graph_is_valid_onnx():
    model = onnx.load_from_string(log_softmax_graph())
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["LogSoftmax"] and not model.graph.node[0].attribute  # axis -1


@pytest.mark.parametrize("rows, vocab", [(1, 7), (4, 8000), (128, 32128)])
def test_log_softmax_matches_torch_and_leaves_its_input(rows, vocab):
    logits = (np.random.default_rng(rows).standard_normal((rows, vocab)) * 4).astype(np.float32)
    logits[0, 0] = -np.inf  # a token a processor removed before: stays -inf, the rest of its row is unaffected
    before = logits.copy()
    got = LogSoftmax()(logits)
    want = torch.log_softmax(torch.from_numpy(logits), dim=-1).numpy()
    assert got.dtype == np.float32 and got.shape == (rows, vocab)
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    finite = np.isfinite(want)
    assert np.abs(got[finite] - want[finite]).max() < 1e-5
    assert np.array_equal(logits, before, equal_nan=True)
    got[0, 1] = 0.0  # beam search adds the beam scores in place: the output is an array of its own
    half = LogSoftmax()(logits.astype(np.float16))  # an fp16 export's logits: computed in float32
    assert half.dtype == np.float32 and half.shape == (rows, vocab)


@pytest.mark.skipif(not available(), reason="flushing needs glibc on x86-64")
@pytest.mark.parametrize("rows, vocab", [(1, 7), (8, 32128)])
def test_flushing_subnormals_leaves_the_log_probabilities_bit_for_bit(rows, vocab):
    # logits spread over several hundred, as mT5's do: many exponentials are subnormal in float32 (the logit 87.3 to
    # 103 below its row's maximum), more are 0
    logits = (np.random.default_rng(rows).standard_normal((rows, vocab)) * 60).astype(np.float32)
    logits[0, 1] = -np.inf
    below = logits.max(axis=1, keepdims=True) - logits
    assert rows == 1 or np.count_nonzero((below > 87.4) & (below < 103)) > 100
    flushed, kept = LogSoftmax()(logits), LogSoftmax(flush_subnormals=False)(logits)
    assert np.array_equal(flushed, kept)
