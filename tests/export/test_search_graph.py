"""The search graph (`export.search_graph`): onnxruntime's BeamSearch op around the export's graphs gives the Python
loop's greedy tokens, serves only the calls it gives them for, and shares the folder's weights and checks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from export import OnnxT5
from export.exporter import export
from export.fuse_attention import grouping
from export.layout import DECODER_WITH_PAST, SEARCH, quantized_name
from export.runtime.settings import resolve

GREEDY = {"num_beams": 1, "do_sample": False}


def both(folder, quantized=False):
    """The folder loaded twice: the Python loop alone, and with the search graph."""
    return (OnnxT5.from_pretrained(folder, quantized=quantized, search_graph=False),
            OnnxT5.from_pretrained(folder, quantized=quantized))


def rows(batch, n=6):
    """Single-row inputs of several lengths (what the graph serves)."""
    ids, mask = batch([3, 7, 12, 5, 9, 16][:n], seed=4)
    return [(ids[i:i + 1, :mask[i].sum()], mask[i:i + 1, :mask[i].sum()]) for i in range(n)]


def test_greedy_tokens_are_the_loops(exported, batch):
    loop, graph = both(exported.onnx_dir)
    assert graph.search is not None and graph.search.session is None  # opened by the first call it serves
    ended = 0
    for ids, mask in rows(batch):
        for least in (0, 12):
            kwargs = {**GREEDY, "max_new_tokens": 16, "min_new_tokens": least}
            want, got = loop.generate(ids, mask, **kwargs), graph.generate(ids, mask, **kwargs)
            assert got.dtype == np.int64 and got.shape == want.shape, (exported.name, least)
            np.testing.assert_array_equal(got, want, err_msg=f"{exported.name} min_new_tokens={least}")
            ended += int(least == 0 and want.shape[1] < 17)
    assert graph.search.session is not None  # the graph ran, not the loop
    assert ended, "no row ended before max_new_tokens: the EOS path went unchecked"


def test_short_inputs_encode_on_the_callers_thread(tied, batch):
    """Served calls whose input is short for the encoder's size run it on a one-thread session of their own, longer
    ones on a session with the search graph's options (its threads spinning only within the run), both with the model
    encoder's states; a one-thread model's calls on the model's encoder session."""
    from export.layout import ENCODER, graph_files
    from export.runtime.model import SEARCH_ENCODER_WORK

    model = OnnxT5.from_pretrained(tied.onnx_dir, threads=2)
    assert model.search.encoder is None and model.search.long_encoder is None  # opened at the first input each takes
    ids, mask = batch([7], seed=3)
    want = OnnxT5.from_pretrained(tied.onnx_dir, search_graph=False).generate(ids, mask, max_new_tokens=6)
    np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=6), want)
    size = sum((tied.onnx_dir / f).stat().st_size for f in graph_files(tied.onnx_dir, ENCODER))
    assert model.search.encoder_tokens == SEARCH_ENCODER_WORK // size >= 7
    assert model.search.encoder.get_session_options().intra_op_num_threads == 1
    assert model.search.long_encoder is None
    assert model.encoder.get_session_options().intra_op_num_threads == 2
    np.testing.assert_array_equal(model.search.encode(ids, mask), model.encode(ids, mask))
    model.search.encoder_tokens = 6  # a 7-token row is too long for the one-thread session now
    np.testing.assert_array_equal(model.generate(ids, mask, max_new_tokens=6), want)
    options = model.search.long_encoder.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    np.testing.assert_array_equal(model.search.encode(ids, mask), model.encode(ids, mask))
    alone = OnnxT5.from_pretrained(tied.onnx_dir, threads=1)
    np.testing.assert_array_equal(alone.generate(ids, mask, max_new_tokens=6), want)
    assert alone.search.encoder_path is None and alone.search.encoder is None
    with pytest.raises(ValueError, match="without an encoder graph"):
        alone.search.encode(ids, mask)


def test_search_pool_spins_within_its_run_only(tied):
    """The search graph runs on the model's threads, which stop spinning when its run ends: a pool spinning on would
    take a core from the next call's sessions; the per-step graphs' pools spin on between their back-to-back runs, and
    the model's encoder's never spin (the previous call's per-step pool may still be spinning)."""
    model = OnnxT5.from_pretrained(tied.onnx_dir, threads=2)
    entry = model.search.options.get_session_config_entry
    assert model.search.options.intra_op_num_threads == 2
    assert (entry("session.intra_op.allow_spinning"), entry("session.force_spinning_stop")) == ("1", "1")
    step = model.decoder_with_past.get_session_options().get_session_config_entry
    assert step("session.intra_op.allow_spinning") == "1"
    with pytest.raises(RuntimeError):  # onnxruntime's answer for an entry never set
        model.decoder_with_past.get_session_options().get_session_config_entry("session.force_spinning_stop")
    assert model.encoder.get_session_options().get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_other_calls_run_the_loop(tied, batch):
    loop, graph = both(tied.onnx_dir)
    ids, mask = batch([6, 9], seed=2)
    for kwargs in ({"num_beams": 2}, {"do_sample": True, "seed": 3}, {"repetition_penalty": 1.3},
                   {"no_repeat_ngram_size": 2}, {"eos_token_id": [1, 5]}):
        assert not graph.search.serves(resolve(graph.settings, {"max_new_tokens": 8, **kwargs}, graph.vocab_size))
        np.testing.assert_array_equal(graph.generate(ids[:1], mask[:1], max_new_tokens=8, **kwargs),
                                      loop.generate(ids[:1], mask[:1], max_new_tokens=8, **kwargs))
    # two rows: the loop (the graph was slower than the loop at batch 8 and 32, docs/results.md)
    fresh = OnnxT5.from_pretrained(tied.onnx_dir)
    np.testing.assert_array_equal(fresh.generate(ids, mask, max_new_tokens=8),
                                  loop.generate(ids, mask, max_new_tokens=8))
    assert fresh.search.session is None


def test_graph_holds_no_weights_and_is_checked(tied, tmp_path, batch):
    meta = json.loads((tied.onnx_dir / "export_meta.json").read_text())
    assert meta["search_graph"]["written"] == [SEARCH] and not meta["search_graph"]["not_kept"]
    assert SEARCH in meta["files"]
    model = onnx.load(str(tied.onnx_dir / SEARCH), load_external_data=False)
    weights = [t for a in model.graph.node[0].attribute if a.g.name for t in a.g.initializer if len(t.dims) == 2]
    assert weights and all(t.data_location == onnx.TensorProto.EXTERNAL for t in weights)
    places = {e.value for t in weights for e in t.external_data if e.key == "location"}
    assert places <= {f.name for f in tied.onnx_dir.iterdir() if f.name.endswith(".onnx_data")} and places
    # a search graph from another export is refused, naming the file, at the first call it would serve
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tied.onnx_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    model.metadata_props[[p.key for p in model.metadata_props].index("t5fast.export_id")].value = "0" * 32
    onnx.save(model, str(copy / SEARCH))
    listed = json.loads((copy / "export_meta.json").read_text())
    listed["files"][SEARCH]["bytes"] = (copy / SEARCH).stat().st_size
    (copy / "export_meta.json").write_text(json.dumps(listed))
    ids, mask = batch([5], seed=1)
    with pytest.raises(ValueError, match=f"{SEARCH} belongs to another export"):
        OnnxT5.from_pretrained(copy).generate(ids, mask, max_new_tokens=4)
    with pytest.raises(TypeError, match="search_graph must be True or False"):
        OnnxT5.from_pretrained(tied.onnx_dir, search_graph="yes")


def test_decoder_subgraph_is_trimmed(tied):
    """Inside the op every beam's row has its own encoder K/V, so the with-past graph's grouping Reshapes go; the
    op's int32 ids and mask are read as they come, not cast to int64 and back."""
    with_past = onnx.load(str(tied.onnx_dir / DECODER_WITH_PAST), load_external_data=False).graph
    search = onnx.load(str(tied.onnx_dir / SEARCH), load_external_data=False).graph.node[0]
    decoder = next(a.g for a in search.attribute if a.name == "decoder")
    grouped = [n.name for n in with_past.node if grouping(n)]
    assert len(grouped) == 2 * sum(1 for v in with_past.input if v.name.endswith(".encoder.key"))
    assert not {n.name for n in decoder.node} & set(grouped)
    assert len(decoder.node) < len(with_past.node) - len(grouped)  # their shape arithmetic went too
    casts = [n for n in decoder.node if n.op_type == "Cast" and n.input[0] in ("input_ids", "encoder_attention_mask")]
    assert not casts, [n.name for n in casts]


def test_int8_search_graph(tied, tmp_path, batch):
    out = export(str(tied.model_dir), tmp_path / "onnx", int8=True, require_tokenizer=False)
    meta = json.loads((out / "export_meta.json").read_text())
    assert quantized_name(SEARCH) in meta["search_graph"]["written"]
    loop, graph = both(out, quantized="int8")
    for ids, mask in rows(batch, 3):
        kwargs = {**GREEDY, "max_new_tokens": 16}
        np.testing.assert_array_equal(graph.generate(ids, mask, **kwargs), loop.generate(ids, mask, **kwargs))
    assert graph.search.path.name == quantized_name(SEARCH) and graph.search.session is not None


def test_large_decoders_run_the_loop(tied, monkeypatch):
    """One thread serves small decoders only (`SEARCH_MAX_STEP_BYTES`): a larger one is left to the loop."""
    from export.runtime import model as runtime_model

    monkeypatch.setattr(runtime_model, "SEARCH_MAX_STEP_BYTES", 1000)
    assert OnnxT5.from_pretrained(tied.onnx_dir).search is None
    monkeypatch.undo()
    assert OnnxT5.from_pretrained(tied.onnx_dir).search is not None


def test_export_drops_a_graph_whose_tokens_differ(tied, tmp_path, monkeypatch):
    """The export's check compares each validation row alone: a graph that gives other tokens is not kept."""
    from export.runtime.search import InGraphSearch

    served = []
    honest = InGraphSearch.generate

    def off_by_one(self, ids, mask, hidden, s):
        served.append(mask.shape)
        tokens = honest(self, ids, mask, hidden, s)
        tokens[0, -1] += 1
        return tokens

    monkeypatch.setattr(InGraphSearch, "generate", off_by_one)
    with pytest.warns(RuntimeWarning, match=f"{SEARCH} not kept"):
        out = export(str(tied.model_dir), tmp_path / "onnx", require_tokenizer=False)
    meta = json.loads((out / "export_meta.json").read_text())["search_graph"]
    assert meta["written"] == [] and list(meta["not_kept"]) == [SEARCH] and not (out / SEARCH).exists()
    assert all(shape[0] == 1 for shape in served) and len(served) >= 3  # row by row, both settings
    monkeypatch.undo()
    assert OnnxT5.from_pretrained(out).search is None


def test_a_damaged_search_graph_is_named(tied, tmp_path, batch):
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in tied.onnx_dir.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    size = (copy / SEARCH).stat().st_size
    (copy / SEARCH).write_bytes(b"\0" * size)  # the size export_meta.json lists, other bytes
    ids, mask = batch([5], seed=1)
    model = OnnxT5.from_pretrained(copy)
    with pytest.raises(ValueError, match=f"cannot load .*{SEARCH}.*re-export"):
        model.generate(ids, mask, max_new_tokens=4)
