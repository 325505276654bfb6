"""`bench.decoder_step`: one decoder call fed and made as OnnxT5 makes it, the shared-cache graphs' included, so that
the profiles and timings built on it measure the step the runtime runs."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest

from bench.decoder_step import BoundStep, step_call, step_feed, step_ms
from bench.errors import BenchError
from export.exporter import export
from export.layout import DECODER_WITH_PAST, SHARED_CACHE, quantized_name


@pytest.fixture(scope="module")
def tiny_export(tiny_t5_dir, tmp_path_factory):
    return export(str(tiny_t5_dir), tmp_path_factory.mktemp("decoder_step") / "onnx", int8=True)


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_a_shared_cache_step_is_bound_as_the_runtime_binds_it(tiny_export):
    """Bound, the shared-cache graph computes what `run` computes on the same feed, and writes the new position into
    the past's own buffer, which `run` leaves alone; called again, it makes the same step."""
    graph = session(tiny_export / SHARED_CACHE)
    feed = step_feed(graph, batch=2, past=3, encoder_length=5)
    own = [n for n in feed if n.startswith("past_key_values.") and ".decoder." in n]
    assert feed[own[0]].shape[2] == 4 and feed["cache_indirection"].shape == (2, 1, 4)
    assert feed["past_sequence_length"].tolist() == [3] and feed["encoder_attention_mask"].shape == (2, 5)
    names = [o.name for o in graph.get_outputs()]
    expected = dict(zip(names, graph.run(None, {k: v.copy() for k, v in feed.items()}), strict=True))
    call = step_call(graph, feed)
    assert isinstance(call, BoundStep)
    before = feed[own[0]].copy()
    call()
    logits = call.binding.get_outputs()[names.index("logits")].numpy()
    np.testing.assert_allclose(logits, expected["logits"], rtol=1e-5, atol=1e-6)
    present = expected[own[0].replace("past_key_values.", "present.")]
    np.testing.assert_allclose(feed[own[0]][:, :, 3], present[:, :, 3], rtol=1e-5, atol=1e-6)
    assert not np.array_equal(feed[own[0]][:, :, 3], before[:, :, 3])  # the new position went into the buffer
    np.testing.assert_array_equal(feed[own[0]][:, :, :3], before[:, :, :3])  # the filled ones are as they were
    call()
    np.testing.assert_array_equal(call.binding.get_outputs()[names.index("logits")].numpy(), logits)


def test_a_with_past_step_runs_its_graph_as_it_is(tiny_export):
    for path in (tiny_export / DECODER_WITH_PAST, tiny_export / quantized_name(DECODER_WITH_PAST)):
        graph = session(path)
        feed = step_feed(graph, batch=1, past=2)
        assert "cache_indirection" not in feed and feed[next(n for n in feed if ".decoder." in n)].shape[2] == 2
        call = step_call(graph, feed)
        assert not isinstance(call, BoundStep) and len(call()) == len(graph.get_outputs())
    assert step_ms(session(tiny_export / quantized_name(SHARED_CACHE)), batch=1, past=2, repeats=3) > 0


def test_an_input_no_decoder_step_has_is_named():
    other = SimpleNamespace(get_inputs=lambda: [SimpleNamespace(name="pixel_values", shape=[1, 3, 8, 8])])
    with pytest.raises(BenchError, match="pixel_values is not an input of a decoder-with-past graph"):
        step_feed(other, batch=1, past=1)
