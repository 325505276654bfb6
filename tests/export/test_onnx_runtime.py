"""OnnxT5 against transformers' generate on the same weights: token for token, greedy and beam, padded batches."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from export import OnnxT5

LENGTHS = [9, 6, 3, 8, 1]  # a padded batch of 5, one row of a single token
GREEDY = {
    "greedy": {"max_new_tokens": 12},
    "greedy-min-new-tokens": {"max_new_tokens": 12, "min_new_tokens": 6},
    "greedy-no-repeat-penalty": {"max_new_tokens": 10, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3},
}
BEAM = {
    "beam3": {"num_beams": 3, "max_new_tokens": 10},
    "beam4-return2-lp0.6": {"num_beams": 4, "num_return_sequences": 2, "length_penalty": 0.6, "max_new_tokens": 10},
    "beam3-early-stopping": {"num_beams": 3, "early_stopping": True, "max_new_tokens": 8, "min_new_tokens": 3},
    "beam3-never-no-repeat": {"num_beams": 3, "early_stopping": "never", "no_repeat_ngram_size": 2,
                              "max_new_tokens": 8},
}


def _reference(model, ids: np.ndarray, mask: np.ndarray | None, **kwargs) -> np.ndarray:
    with torch.no_grad():
        return model.generate(input_ids=torch.from_numpy(ids),
                              attention_mask=None if mask is None else torch.from_numpy(mask), **kwargs).numpy()


@pytest.mark.parametrize("kwargs", list({**GREEDY, **BEAM}.values()), ids=list({**GREEDY, **BEAM}))
def test_generate_matches_transformers_token_for_token(exported, kwargs, batch):
    ids, mask = batch(LENGTHS)
    runtime = OnnxT5.from_pretrained(exported.onnx_dir)
    want = _reference(exported.model, ids, mask, **kwargs)
    got = runtime.generate(ids, mask, **kwargs)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(want[:, 1:])) > 4  # the model does not just repeat one token


@pytest.mark.parametrize("per_input", [True, False], ids=["shared-by-beams", "repeated-per-beam"])
def test_beams_share_their_inputs_cross_attention_rows(tied, batch, per_input):
    """The runtime feeds one cross-attention K/V row per input; fed a row per beam (optimum's layout), the same graph
    decodes the same tokens. (Beam search on the with-past graph: the shared-cache graph's steps are
    test_shared_cache.py's.)"""
    runtime = OnnxT5.from_pretrained(tied.onnx_dir, shared_cache=False)
    rows = []
    step = runtime.decoder_with_past.run

    def run(_, names, feed):
        if not per_input:  # the encoder side repeated for each of the 3 beams, as optimum feeds it
            feed = {name: np.repeat(value, 3, axis=0) if name == "encoder_attention_mask" or ".encoder." in name
                    else value for name, value in feed.items()}
        rows.append(feed["past_key_values.0.encoder.key"].shape[0])
        return step(names, feed)

    runtime.decoder_with_past = type("Spy", (), {"run": run})()
    ids, mask = batch(LENGTHS)
    got = runtime.generate(ids, mask, **BEAM["beam3"])
    np.testing.assert_array_equal(got, _reference(tied.model, ids, mask, **BEAM["beam3"]))
    assert set(rows) == {len(LENGTHS) * (1 if per_input else 3)}


def test_encoder_in_chunks_decodes_the_same(tied, batch, monkeypatch):
    """Inputs longer than ENCODER_CHUNK_TOKENS run through the encoder a few rows at a time, to the same tokens."""
    from export.runtime import model as rt

    monkeypatch.setattr(rt, "ENCODER_CHUNK_TOKENS", 18)  # 2 rows of 9 tokens per run: 3 runs for the batch of 5
    runtime = OnnxT5.from_pretrained(tied.onnx_dir)
    runs = []
    encoder = runtime.encoder
    runtime.encoder = type("Spy", (), {"run": lambda _, names, feed, options=None: runs.append(
        len(feed["input_ids"])) or encoder.run(names, feed, options)})()
    ids, mask = batch(LENGTHS)
    for kwargs in (GREEDY["greedy"], BEAM["beam3"]):
        want = _reference(tied.model, ids, mask, **kwargs)
        np.testing.assert_array_equal(runtime.generate(ids, mask, **kwargs), want)
    assert runs == [2, 2, 1, 2, 2, 1]


def test_comparisons_see_early_eos_and_full_length_rows(tied, batch):
    ids, mask = batch(LENGTHS)
    out = OnnxT5.from_pretrained(tied.onnx_dir).generate(ids, mask, max_new_tokens=12)
    ended = (out == 1).any(axis=1)
    assert ended.any() and not ended.all()  # so pad-after-EOS and running rows are both compared


def test_teacher_forced_logits_match_pytorch_within_1e_4(exported, batch):
    """The runtime's first step, then steps reusing its cache, against PyTorch stepping with its own cache."""
    ids, mask = batch([7, 4, 2, 5], seed=3)
    decoder = np.random.default_rng(4).integers(2, 48, (4, 6))
    decoder[:, 0] = 0
    runtime = OnnxT5.from_pretrained(exported.onnx_dir)
    hidden = runtime.encode(ids, mask)
    logits, own, cross = runtime.first_step(decoder[:, :1], mask, hidden)
    steps = [logits]
    for t in range(1, decoder.shape[1]):
        logits, own = runtime.step(decoder[:, t:t + 1], mask, own, cross)
        steps.append(logits)
    want, cache = [], None
    with torch.no_grad():
        encoded = exported.model.get_encoder()(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
        for t in range(decoder.shape[1]):
            out = exported.model(encoder_outputs=encoded, attention_mask=torch.from_numpy(mask), use_cache=True,
                                 decoder_input_ids=torch.from_numpy(decoder[:, t:t + 1]), cache=cache)
            want.append(out.logits[:, -1].numpy())
            cache = out.cache
    diff = np.max(np.abs(np.stack(steps, axis=1) - np.stack(want, axis=1)))
    assert diff < 1e-4, f"max |logits diff| {diff:.2e}"


def test_long_inputs_and_outputs_cross_the_relative_position_max_distance(tied, batch):
    ids, mask = batch([200, 150], seed=2)  # T5's relative buckets saturate at 128 positions
    kwargs = {"max_new_tokens": 140, "min_new_tokens": 140}
    np.testing.assert_array_equal(OnnxT5.from_pretrained(tied.onnx_dir).generate(ids, mask, **kwargs),
                                  _reference(tied.model, ids, mask, **kwargs))


def test_generate_takes_tensors_and_lists(tied, batch):
    ids, mask = batch(LENGTHS)
    runtime = OnnxT5.from_pretrained(tied.onnx_dir)
    want = runtime.generate(ids, mask, max_new_tokens=6)
    np.testing.assert_array_equal(runtime.generate(torch.from_numpy(ids), torch.from_numpy(mask), max_new_tokens=6),
                                  want)
    np.testing.assert_array_equal(runtime.generate(ids.tolist(), mask.tolist(), max_new_tokens=6), want)
    # without a mask every position is attended to, padding included, as in transformers 5.x for encoder-decoders
    np.testing.assert_array_equal(runtime.generate(ids, max_new_tokens=6),
                                  _reference(tied.model, ids, None, max_new_tokens=6))


def test_sampling_is_seeded_and_honours_its_options(tied, batch):
    ids, mask = batch(LENGTHS)
    runtime = OnnxT5.from_pretrained(tied.onnx_dir)
    kwargs = {"do_sample": True, "max_new_tokens": 8, "temperature": 1.5, "top_p": 0.9}
    first = runtime.generate(ids, mask, seed=7, **kwargs)
    np.testing.assert_array_equal(first, runtime.generate(ids, mask, seed=7, **kwargs))
    assert not np.array_equal(first, runtime.generate(ids, mask, seed=8, **kwargs))
    # top_k=1 leaves one candidate: sampling then is greedy decoding
    np.testing.assert_array_equal(runtime.generate(ids, mask, do_sample=True, top_k=1, seed=0, max_new_tokens=8),
                                  runtime.generate(ids, mask, max_new_tokens=8))
    several = runtime.generate(ids, mask, do_sample=True, num_return_sequences=3, seed=1, max_new_tokens=5)
    assert several.shape[0] == 3 * len(LENGTHS)
    beam_sample = runtime.generate(ids, mask, do_sample=True, num_beams=3, num_return_sequences=2, seed=1,
                                   max_new_tokens=5, top_k=10)
    assert beam_sample.shape[0] == 2 * len(LENGTHS) and (beam_sample[:, 0] == 0).all()


def test_defaults_come_from_generation_config(tied, tmp_path, batch):
    folder = tmp_path / "onnx"
    shutil.copytree(tied.onnx_dir, folder)
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, "max_new_tokens": 4, "num_beams": 2}))
    ids, mask = batch(LENGTHS)
    got = OnnxT5.from_pretrained(folder).generate(ids, mask)
    np.testing.assert_array_equal(got, _reference(tied.model, ids, mask, max_new_tokens=4, num_beams=2))

    (folder / "generation_config.json").write_text(json.dumps({**config, "bad_words_ids": [[5]]}))
    with pytest.raises(ValueError, match="bad_words_ids"):
        OnnxT5.from_pretrained(folder)


def test_unsupported_or_inconsistent_options_raise(tied, batch):
    runtime = OnnxT5.from_pretrained(tied.onnx_dir)
    ids, mask = batch(LENGTHS)
    with pytest.raises(TypeError, match="num_beam_groups"):
        runtime.generate(ids, mask, num_beam_groups=2)
    with pytest.raises(ValueError, match="num_return_sequences"):
        runtime.generate(ids, mask, num_return_sequences=2)  # greedy returns one sequence per input
    with pytest.raises(ValueError, match="num_return_sequences"):
        runtime.generate(ids, mask, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="2-D"):
        runtime.generate(ids[0], mask[0])


def test_missing_graph_is_named(tied, tmp_path):
    folder = tmp_path / "onnx"
    shutil.copytree(tied.onnx_dir, folder, ignore=shutil.ignore_patterns("decoder_model_merged*"))  # an older export
    (folder / "decoder_with_past_model.onnx").unlink()
    with pytest.raises(FileNotFoundError, match=r"decoder_with_past_model\.onnx"):
        OnnxT5.from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        OnnxT5.from_pretrained(tmp_path / "nothing")


def test_quantized_without_int8_graphs_says_how_to_make_them(tied):
    with pytest.raises(FileNotFoundError, match="--int8"):
        OnnxT5.from_pretrained(tied.onnx_dir, quantized=True)


def test_runtime_imports_neither_torch_nor_transformers():
    code = ("import export, sys; from export import OnnxT5; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, "
            "sorted(m for m in ('torch', 'transformers') if m in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_load_or_export_exports_once_then_reuses(tmp_path, monkeypatch, batch, tiny_t5):
    import export.exporter
    from export.exporter import load_or_export

    tiny_t5(tmp_path / "model", "3enc-1dec")
    runtime = load_or_export(tmp_path / "model", onnx_path=tmp_path / "onnx", require_tokenizer=False)
    ids, mask = batch(LENGTHS)
    first = runtime.generate(ids, mask, max_new_tokens=5)

    calls = []
    with monkeypatch.context() as patch:
        patch.setattr(export.exporter, "export", lambda *a, **k: calls.append(a))
        again = load_or_export(str(tmp_path / "model"), onnx_path=tmp_path / "onnx", require_tokenizer=False)
    assert calls == []  # reused
    np.testing.assert_array_equal(again.generate(ids, mask, max_new_tokens=5), first)

    (tmp_path / "model" / "model.safetensors").touch()  # changed weights: exported again, replacing the folder
    load_or_export(tmp_path / "model", onnx_path=tmp_path / "onnx", require_tokenizer=False)
    meta = json.loads((tmp_path / "onnx" / "export_meta.json").read_text())
    weights = tmp_path / "model" / "model.safetensors"
    assert meta["source_fingerprint"]["model.safetensors"] == [weights.stat().st_size, weights.stat().st_mtime_ns]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "onnx"]  # no staging or old folder left

    tiny_t5(tmp_path / "other", "3enc-1dec", seed=2)
    with pytest.raises(ValueError, match="holds an export of"):
        load_or_export(tmp_path / "other", onnx_path=tmp_path / "onnx", require_tokenizer=False)


@pytest.mark.parametrize("shape, k", [((3, 4 * 2000 + 37), 8), ((2, 5000), 4), ((3, 4 * 500), 8), ((2, 40), 4),
                                      ((1, 6), 6), ((2, 4 * 8000 + 3), 8), ((2, 4 * 32128), 16), ((1, 4 * 250112), 8)])
def test_topk_is_a_stable_descending_sort_cut_at_k(shape, k):
    """Beam search's top-k: selection by strided groups (long rows, of `group_size` columns or any other) or a sort,
    same order as a full stable sort (ties: lowest index first), -inf included, the largest value in the columns past
    the last whole group included."""
    from export.runtime.topk import group_size, topk

    x = np.round(np.random.default_rng(0).standard_normal(shape), 1).astype(np.float32)  # many ties
    x[:, 3] = x[:, 1] = x.max() + 1  # a tie at the very top
    x[0, -2] = -np.inf
    x[-1, -1] = x.max() + 2  # in the tail group when the row is not a multiple of the group size
    want = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    for block in (None, 32, 128, 512):
        values, idx = topk(x, k, block)
        assert np.array_equal(idx, want) and np.array_equal(values, np.take_along_axis(x, want, axis=-1)), block
    assert [group_size(n) for n in (6, 8000, 32000, 4 * 32128, 4 * 250112)] == [32, 32, 64, 128, 256]


@pytest.mark.parametrize("shape, k", [((1, 8), 4), ((3, 12, 5), 4), ((2, 4, 3, 2), 8)])
def test_rows_of_picks_what_take_along_axis_picks(shape, k):
    """Beam search's row picking: x[b, idx[b, j]] with its trailing axes, repeated and reordered indices included."""
    from export.runtime.rows import rows_of

    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape)
    idx = rng.integers(0, shape[1], (shape[0], k))
    got = rows_of(x, idx)
    want = np.take_along_axis(x, idx.reshape(idx.shape + (1,) * (x.ndim - 2)), axis=1)
    assert got.shape == (shape[0], k, *shape[2:]) and np.array_equal(got, want)
    got[0, 0] = 99.0  # a new array, not a view into x
    assert not (x == 99.0).any()


def test_loading_returns_the_heap_it_freed(tied, monkeypatch):
    """Parsing the graphs frees a copy of their weights that glibc would keep: from_pretrained trims it, once."""
    from export.runtime import model

    calls = []
    monkeypatch.setattr(model, "return_freed_heap", lambda: calls.append(1))
    OnnxT5.from_pretrained(tied.onnx_dir)
    assert calls == [1]


def test_with_past_graph_serves_both_steps_and_older_folders_decode_the_same(tied, tmp_path, batch):
    """OnnxT5 runs the first step on the with-past graph and decoder_cross_kv_model.onnx (each decoder weight once,
    no branches); an export without that graph serves from the merged decoder, one without either from the two
    decoder graphs: all decode transformers' greedy and beam tokens."""
    from export.runtime.first_step import FirstStep
    from export.runtime.merged import Branch

    served = OnnxT5.from_pretrained(tied.onnx_dir)
    assert isinstance(served.decoder, FirstStep) and served.decoder.with_past is served.decoder_with_past
    assert set(served.files) == {"encoder_model.onnx", "decoder_cross_kv_model.onnx", "decoder_with_past_model.onnx"}
    merged, separate = tmp_path / "merged", tmp_path / "separate"
    shutil.copytree(tied.onnx_dir, merged, ignore=shutil.ignore_patterns("decoder_cross_kv*"))
    shutil.copytree(tied.onnx_dir, separate,
                    ignore=shutil.ignore_patterns("decoder_cross_kv*", "decoder_model_merged*"))
    models = [served, OnnxT5.from_pretrained(merged), OnnxT5.from_pretrained(separate)]
    assert isinstance(models[1].decoder, Branch)
    assert models[1].decoder.session is models[1].decoder_with_past.session
    assert not isinstance(models[2].decoder, Branch | FirstStep)
    ids, mask = batch(LENGTHS)
    for kwargs in ({"max_new_tokens": 10}, BEAM["beam3"]):
        want = _reference(tied.model, ids, mask, **kwargs)
        for model in models:
            np.testing.assert_array_equal(model.generate(ids, mask, **kwargs), want)
