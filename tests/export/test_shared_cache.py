"""The shared-cache graphs (`export.shared_cache`): greedy and beam search with the self-attention cache appended in
place and beams followed by an index give the Python loop's tokens (which copies the cache), the index follows any
reorder, and one-row calls step on the one-row graph's."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest

from export import OnnxT5
from export.exporter import export
from export.layout import ONE_ROW_SHARED, SHARED_CACHE, quantized_name
from export.runtime.deferred import DeferredSession
from export.runtime.settings import resolve
from export.runtime.shared_cache import SharedCacheSteps


def both(folder, quantized=False):
    """The folder loaded twice: the searches on the with-past graph (copies), and on the shared-cache graph."""
    return (OnnxT5.from_pretrained(folder, quantized=quantized, shared_cache=False),
            OnnxT5.from_pretrained(folder, quantized=quantized))


SETTINGS = [
    {"num_beams": 4, "max_new_tokens": 12},
    {"num_beams": 3, "max_new_tokens": 12, "num_return_sequences": 2, "length_penalty": 0.6},
    {"num_beams": 4, "max_new_tokens": 12, "min_new_tokens": 12, "early_stopping": True},
    {"num_beams": 2, "max_new_tokens": 10, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
]


def test_beam_tokens_are_the_loops(exported, batch):
    loop, graph = both(exported.onnx_dir)
    assert graph.shared is not None and graph.shared.session is not None  # opened at load, in the with-past graph's
    assert isinstance(graph.decoder_with_past, DeferredSession) and not graph.decoder_with_past.opened  # place
    ids, mask = batch([3, 9, 6], seed=2)
    ended = 0
    for kwargs in SETTINGS:
        want, got = loop.generate(ids, mask, **kwargs), graph.generate(ids, mask, **kwargs)
        np.testing.assert_array_equal(got, want, err_msg=f"{exported.name} {kwargs}")
        ended += int(want.shape[1] < 1 + kwargs["max_new_tokens"])
    assert not graph.decoder_with_past.opened  # the graph ran, not the copies
    if exported.name == "t5-relu-tied":  # the model whose searches end early within these lengths
        assert ended, "every search ran to max_new_tokens: the EOS path went unchecked"


GREEDY = [
    {"max_new_tokens": 12},
    {"max_new_tokens": 12, "min_new_tokens": 12, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
    {"max_new_tokens": 100, "min_new_tokens": 100},  # the buffers double twice
]


def test_greedy_tokens_are_the_loops(exported, batch):
    loop, graph = both(exported.onnx_dir)
    ids, mask = batch([3, 9, 6], seed=4)
    for kwargs in GREEDY:
        np.testing.assert_array_equal(graph.generate(ids, mask, **kwargs), loop.generate(ids, mask, **kwargs),
                                      err_msg=f"{exported.name} {kwargs}")
    assert not graph.decoder_with_past.opened and loop.shared is None


def test_the_with_past_graph_opens_at_its_first_run(tied, batch):
    """Where the searches step on the shared-cache graph, the with-past graph's session (a second copy of the
    decoder's weights) opens only when something runs it: the steps called directly, assisted decoding."""
    loop, graph = both(tied.onnx_dir)
    assert isinstance(loop.decoder_with_past, ort.InferenceSession)  # without the graph: opened at load
    ids, mask = batch([4, 7], seed=8)
    hidden = graph.encode(ids, mask)
    start = np.zeros((2, 1), dtype=np.int64)
    assert not graph.decoder_with_past.opened
    want, got = loop.first_step(start, mask, hidden), graph.first_step(start, mask, hidden)
    for a, b in zip([want[0], *want[1], *want[2]], [got[0], *got[1], *got[2]], strict=True):
        np.testing.assert_array_equal(b, a)  # logits, self- and cross-attention K/V: the same graphs ran
    assert graph.decoder_with_past.opened
    assert graph.multi_token_steps == loop.multi_token_steps
    # its inputs and outputs, read from the shared-cache graph before it opened, are the with-past graph's names
    session = graph.decoder_with_past.session
    assert [i.name for i in graph.decoder_with_past.get_inputs()] == [i.name for i in session.get_inputs()]
    assert [o.name for o in graph.decoder_with_past.get_outputs()] == [o.name for o in session.get_outputs()]
    # a draft model verified several tokens a step: the with-past graph of each, the model's tokens
    draft = OnnxT5.from_pretrained(tied.onnx_dir)
    kwargs = {"max_new_tokens": 8}
    np.testing.assert_array_equal(graph.generate(ids, mask, assistant=draft, **kwargs),
                                  loop.generate(ids, mask, **kwargs))


def test_beam_sampling_repeats_with_its_seed(tied, batch):
    """Beam sampling draws from probabilities that differ from the copies' by float32 rounding, so a draw near a
    boundary can go the other way: the bar is that a seed repeats its tokens, and that they are valid ids."""
    graph = OnnxT5.from_pretrained(tied.onnx_dir)
    ids, mask = batch([3, 9, 6], seed=2)
    kwargs = {"num_beams": 4, "max_new_tokens": 10, "do_sample": True, "seed": 3, "top_k": 10}
    first = graph.generate(ids, mask, **kwargs)
    np.testing.assert_array_equal(graph.generate(ids, mask, **kwargs), first)
    assert graph.shared.session is not None and first.min() >= 0 and first.max() < graph.vocab_size


def test_buffers_grow_past_their_first_width(tied, batch):
    """The buffers start with 64 positions and double: a search of 100 tokens copies them twice over."""
    loop, graph = both(tied.onnx_dir)
    ids, mask = batch([5, 8], seed=6)
    kwargs = {"num_beams": 3, "max_new_tokens": 100, "min_new_tokens": 100}
    np.testing.assert_array_equal(graph.generate(ids, mask, **kwargs), loop.generate(ids, mask, **kwargs))


def test_index_follows_any_reorder(tied, batch):
    """Step for step against the copies, with beams reordered at random (rows taken from other beams of their input,
    the same beam twice, none left in place): the logits agree at every step to the attention kernels' rounding (at
    most 2e-4 on this model, whose large weights amplify it), where an index left behind moves them by 3 to 8."""
    model = OnnxT5.from_pretrained(tied.onnx_dir)
    ids, mask = batch([4, 7], seed=1)
    inputs, beams, steps = ids.shape[0], 3, 20
    s = resolve(model.settings, {"num_beams": beams, "max_new_tokens": steps}, model.vocab_size)
    shared = model.shared.steps(model.decoder.cross_attention, model.vocab_size, beams, s.max_length)
    hidden = model.encode(ids, mask)
    start = np.zeros((inputs, 1), dtype=np.int64)
    want_logits, own, cross = model.first_step(start, mask, hidden)
    got_logits, cache, shared_cross = shared.first_step(start, mask, hidden)
    np.testing.assert_allclose(got_logits, want_logits, atol=1e-2)
    spread = np.repeat(np.arange(inputs), beams)
    own, cache = model.take_rows(own, spread), shared.take_rows(cache, spread)
    rng = np.random.default_rng(0)
    for step in range(steps):
        tokens = rng.integers(2, 40, size=(inputs * beams, 1))
        want, own = model.step(tokens, mask, own, cross)
        got, cache = shared.step(tokens, mask, cache, shared_cross)
        np.testing.assert_allclose(got, want, atol=1e-2, err_msg=f"step {step}")
        if step % 3 != 2:  # every third step the beams continue themselves (no reorder call, as beam search does)
            rows = (rng.integers(0, beams, size=(inputs, beams)) + np.arange(inputs)[:, None] * beams).reshape(-1)
            own, cache = model.take_rows(own, rows), shared.take_rows(cache, rows)
    assert cache.length == steps + 1 == s.max_length == cache.indirection.shape[2]  # sized to max_length at once


def test_export_records_the_graphs_and_int8_agreement(tied, tmp_path, batch):
    out = export(str(tied.model_dir), tmp_path / "onnx", int8=True, require_tokenizer=False)
    meta = json.loads((out / "export_meta.json").read_text())["shared_cache"]
    names = [SHARED_CACHE, quantized_name(SHARED_CACHE), ONE_ROW_SHARED]
    assert meta["written"] == names and not meta["not_kept"]
    assert meta["checks"][SHARED_CACHE]["differ"] == [] and meta["checks"][SHARED_CACHE]["agreement"] == 1.0
    for name in names[1:]:
        assert meta["checks"][name]["tokens_compared"] > 0 and 0.5 < meta["checks"][name]["agreement"] <= 1.0
    # the graphs hold no weights of their own: they read the with-past graphs' data files
    assert all((out / n).stat().st_size < 200_000 for n in names)
    loop, graph = both(out, quantized=True)
    ids, mask = batch([3, 9], seed=5)
    got = graph.generate(ids, mask, num_beams=4, max_new_tokens=10)
    assert graph.shared.session is not None and got.shape[0] == 2
    agree = np.mean(got == loop.generate(ids, mask, num_beams=4, max_new_tokens=10)) if got.shape == (2, 11) else 1
    assert agree > 0.5
    assert quantized_name(SHARED_CACHE) in graph.verify()  # checked with the folder


def test_the_graph_is_optional(tied, tmp_path, batch):
    """A folder without the graph (an export from before it) runs beam search on the copies; shared_cache=False
    leaves it unused; anything but a bool is refused."""
    import shutil

    folder = tmp_path / "onnx"
    shutil.copytree(tied.onnx_dir, folder)
    (folder / SHARED_CACHE).unlink()
    model = OnnxT5.from_pretrained(folder)
    assert model.shared is None
    ids, mask = batch([4], seed=3)
    np.testing.assert_array_equal(model.generate(ids, mask, num_beams=3, max_new_tokens=6),
                                  OnnxT5.from_pretrained(tied.onnx_dir).generate(ids, mask, num_beams=3,
                                                                                 max_new_tokens=6))
    assert OnnxT5.from_pretrained(tied.onnx_dir, shared_cache=False).shared is None
    with pytest.raises(TypeError, match="shared_cache must be True or False"):
        OnnxT5.from_pretrained(tied.onnx_dir, shared_cache="yes")


def test_steps_need_a_fixed_cache_shape(tied):
    """The buffers' heads and d_kv come from the graph's inputs, which the export fixes."""
    model = OnnxT5.from_pretrained(tied.onnx_dir)
    steps = model.shared.steps(model.decoder.cross_attention, model.vocab_size, 2, 10)
    assert isinstance(steps, SharedCacheSteps)
    config = json.loads((tied.onnx_dir / "config.json").read_text())
    assert (steps._heads, steps._d_kv) == (config["num_heads"], config["d_kv"])
