"""OnnxT5 refuses what it cannot trust or run, naming the problem and the fix: folders that are not whole exports,
files from another export, corrupt files, bad generate arguments and inputs; and memory follows what is generated."""

from __future__ import annotations

import hashlib
import json
import shutil
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from export import OnnxT5
from export.layout import (
    CROSS_KV,
    DECODER,
    DECODER_WITH_PAST,
    ENCODER,
    EXPORT_ID_KEY,
    FILES_KEY,
    GRAPH_EXPORT_ID,
    META_FILE,
    MODEL_KEY,
    SHARED_CACHE,
    data_name,
)

LENGTHS = [9, 6, 3, 8, 1]
REEXPORT = r"re-export with `python -m export --model .+ --out .+`"


def restamp(folder: Path, export_id: str) -> None:
    """Make `folder` another export: `export_id` in every graph and in export_meta.json, the file list updated."""
    import onnx

    meta = read_meta(folder)
    for graph in sorted(folder.glob("*.onnx")):
        model = onnx.load(str(graph), load_external_data=False)  # the weights stay in their file
        onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props},
                                            GRAPH_EXPORT_ID: export_id})
        onnx.save(model, str(graph))
    meta[EXPORT_ID_KEY] = export_id
    meta[FILES_KEY] = {p.name: {"bytes": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
                       for p in sorted(folder.iterdir()) if p.is_file() and p.name != META_FILE}
    write_meta(folder, meta)


def read_meta(folder: Path) -> dict:
    return json.loads((folder / META_FILE).read_text())


def write_meta(folder: Path, meta: dict) -> None:
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


@pytest.fixture(scope="module")
def whole(tied, tmp_path_factory) -> Path:
    """A copy of the tied model's export, as `python -m export` wrote it."""
    return Path(shutil.copytree(tied.onnx_dir, tmp_path_factory.mktemp("whole") / "onnx"))


@pytest.fixture
def folder(whole, tmp_path) -> Path:
    """A copy of `whole` this test may damage."""
    return Path(shutil.copytree(whole, tmp_path / "onnx"))


@pytest.fixture(scope="module")
def runtime(whole) -> OnnxT5:
    return OnnxT5.from_pretrained(whole)


# ---- the folder ---------------------------------------------------------------------------------------------------
def test_a_whole_export_loads_and_verifies(whole):
    model = OnnxT5.from_pretrained(whole, verify=True)
    checked = model.verify()
    assert {"encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx", "config.json"} <= set(checked)


def test_folder_without_export_meta_is_refused(folder):
    (folder / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=rf"has no {META_FILE}.*not a complete export.*{REEXPORT}"):
        OnnxT5.from_pretrained(folder)


@pytest.mark.parametrize("staging", [".onnx.staging.host.4242.k9x2q/new", ".onnx.tmp.k9x2q/onnx"])
def test_staging_folder_of_a_killed_export_is_refused(whole, tmp_path, staging):
    """`python -m export` builds the folder in a hidden staging folder beside `--out` and writes export_meta.json
    last: killed before that, the staging folder holds every graph and no export_meta.json."""
    staged = tmp_path / staging
    shutil.copytree(whole, staged)
    (staged / META_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=rf"has no {META_FILE}.*staging folder of an export that did not "
                                                r"finish.*delete"):
        OnnxT5.from_pretrained(staged)


@pytest.mark.parametrize("text, match", [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list"),
                                         ("\udcff", "is not valid JSON")], ids=["broken", "list", "not-utf8"])
def test_export_meta_that_is_not_a_json_object_is_named(folder, text, match):
    (folder / META_FILE).write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(ValueError, match=rf"{META_FILE} {match}.*{REEXPORT}"):
        OnnxT5.from_pretrained(folder)


@pytest.mark.parametrize("key", [FILES_KEY, MODEL_KEY, EXPORT_ID_KEY])
def test_export_meta_lacking_a_key_is_refused(folder, key):
    meta = read_meta(folder)
    del meta[key]
    write_meta(folder, meta)
    with pytest.raises(ValueError, match=rf'{META_FILE} lacks "{key}".*{REEXPORT}'):
        OnnxT5.from_pretrained(folder)


def test_export_meta_with_an_incomplete_model_shape_is_refused(folder):
    meta = read_meta(folder)
    meta[MODEL_KEY]["num_heads"] = None
    write_meta(folder, meta)
    with pytest.raises(ValueError, match=rf'lacks "{MODEL_KEY}"'):
        OnnxT5.from_pretrained(folder)


def test_graph_not_listed_in_export_meta_is_refused(folder):
    meta = read_meta(folder)
    del meta[FILES_KEY][CROSS_KV]  # the first step serves with it
    write_meta(folder, meta)
    with pytest.raises(ValueError, match=rf"{CROSS_KV} is not listed in {META_FILE}"):
        OnnxT5.from_pretrained(folder)


def test_truncated_graph_is_refused_before_onnxruntime_reads_it(folder):
    graph = folder / ENCODER
    graph.write_bytes(graph.read_bytes()[:5000])
    with pytest.raises(ValueError, match=rf"{ENCODER} has 5000 bytes, {META_FILE} says \d+: the file was truncated.*"
                                         rf"{REEXPORT}"):
        OnnxT5.from_pretrained(folder)


def test_corrupt_graph_that_onnxruntime_cannot_load_is_named(folder):
    graph = folder / ENCODER
    graph.write_bytes(graph.read_bytes()[:5000])
    meta = read_meta(folder)
    meta[FILES_KEY][ENCODER]["bytes"] = 5000  # as if export_meta.json had been written for the damaged file
    write_meta(folder, meta)
    with pytest.raises(ValueError, match=rf"onnxruntime cannot load .*{ENCODER} \(.*INVALID_PROTOBUF.*\): the file "
                                         rf"is corrupt or truncated; {REEXPORT}"):
        OnnxT5.from_pretrained(folder)


def test_graph_from_another_export_of_the_same_shape_is_refused(whole, folder, tmp_path):
    other = Path(shutil.copytree(whole, tmp_path / "other"))
    restamp(other, uuid.uuid4().hex)  # another export of a model of the same shape
    # the cross-attention K/V graph serves the first step by default, the shared-cache graph the steps after it; IO
    # binding runs the first-step graph
    for graph, io_binding in ((CROSS_KV, None), (SHARED_CACHE, None), (DECODER, True)):
        shutil.copy(other / graph, folder / graph)
        assert (folder / graph).stat().st_size == read_meta(folder)[FILES_KEY][graph]["bytes"]
        with pytest.raises(ValueError, match=rf"{graph} belongs to another export.*mixes files of different "
                                             rf"exports; {REEXPORT}"):
            OnnxT5.from_pretrained(folder, io_binding=io_binding)
        shutil.copy(whole / graph, folder / graph)
    # the with-past graph opens at its first run there (`DeferredSession`), and is checked then
    shutil.copy(other / DECODER_WITH_PAST, folder / DECODER_WITH_PAST)
    model = OnnxT5.from_pretrained(folder)
    ids = np.array([[4, 5, 1], [6, 7, 1]])
    assert model.generate(ids, max_new_tokens=3).shape[0] == 2  # the searches do not run it
    with pytest.raises(ValueError, match=rf"{DECODER_WITH_PAST} belongs to another export.*mixes files"):
        model.first_step(np.zeros((1, 1), np.int64), np.ones_like(ids), model.encode(ids, np.ones_like(ids)))


def test_export_meta_of_another_export_is_refused(whole, folder, tmp_path):
    other = Path(shutil.copytree(whole, tmp_path / "other"))
    restamp(other, uuid.uuid4().hex)
    shutil.copy(other / META_FILE, folder / META_FILE)
    with pytest.raises(ValueError, match=r"encoder_model.onnx belongs to another export .*; "
                                         r"decoder_cross_kv_model.onnx belongs to another export"):
        OnnxT5.from_pretrained(folder)
    with pytest.raises(ValueError, match=r"encoder_model.onnx belongs to another export .*; decoder_model.onnx "
                                         r"belongs to another export .*; decoder_with_past_model.onnx belongs"):
        OnnxT5.from_pretrained(folder, io_binding=True)  # the two decoder graphs


def test_graph_without_export_id_is_refused(folder):
    import onnx

    model = onnx.load(str(folder / ENCODER))
    kept = [p for p in model.metadata_props if p.key != GRAPH_EXPORT_ID]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    onnx.save(model, str(folder / ENCODER))
    meta = read_meta(folder)
    meta[FILES_KEY][ENCODER]["bytes"] = (folder / ENCODER).stat().st_size
    write_meta(folder, meta)
    with pytest.raises(ValueError, match=rf"{ENCODER} carries no export id"):
        OnnxT5.from_pretrained(folder)


@pytest.mark.parametrize("key, value, match", [
    # the first decoder graph checked is decoder_cross_kv_model.onnx: each layer's cross-attention key and value
    ("num_decoder_layers", 3, r"4 present outputs, where num_decoder_layers 3 needs 6"),
    ("num_heads", 4, r"present.0.encoder.key has heads 2, the model 4"),
    ("d_kv", 8, r"d_kv 16, the model 8"),
    ("vocab_size", 50, r"output logits has vocabulary 48, the model 50"),
    ("d_model", 64, r"last_hidden_state has d_model 32, the model 64"),
])
def test_graphs_that_do_not_fit_the_model_shape_are_refused(folder, key, value, match):
    meta = read_meta(folder)
    meta[MODEL_KEY][key] = value
    write_meta(folder, meta)
    with pytest.raises(ValueError, match=rf"\.onnx does not fit {META_FILE}'s model \(.*\): .*{match}.*{REEXPORT}"):
        OnnxT5.from_pretrained(folder)


@pytest.mark.parametrize("name", ["config.json", "generation_config.json"])
def test_config_files_that_are_not_json_are_named(folder, name):
    (folder / name).write_text('{"vocab_size": 48,')
    with pytest.raises(ValueError, match=rf"{name} is not valid JSON"):
        OnnxT5.from_pretrained(folder)


def test_config_json_of_another_model_is_refused(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "vocab_size": 32128}))
    with pytest.raises(ValueError, match=r"config.json is another model's: vocab_size 32128 \(export: 48\)"):
        OnnxT5.from_pretrained(folder)


@pytest.mark.parametrize("values, match", [
    ({"num_beams": "four"}, r"generation_config.json: num_beams must be an integer, got 'four'"),
    ({"max_new_tokens": 2.5}, r"max_new_tokens must be an integer, got 2.5"),
    ({"length_penalty": float("nan")}, r"length_penalty must be finite"),
    ({"early_stopping": "sometimes"}, r"early_stopping must be True, False or 'never'"),
    ({"min_new_tokens": 5, "max_new_tokens": 2}, r"min_new_tokens=5 must be <= max_new_tokens=2"),
    ({"eos_token_id": 480}, r"eos_token_id ids must be in \[0, 48\)"),
    ({"decoder_start_token_id": -1}, r"decoder_start_token_id must be >= 0, got -1"),
    ({"num_return_sequences": 2}, r"num_return_sequences > 1 needs num_beams > 1"),
])
def test_generation_config_is_checked_at_load_with_generates_rules(folder, values, match):
    config = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**config, **values}))
    with pytest.raises(ValueError, match=match) as info:
        OnnxT5.from_pretrained(folder)
    assert "generation_config.json" in str(info.value)


def test_token_ids_from_config_json_are_checked_at_load(folder):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "decoder_start_token_id": 99}))
    gen = json.loads((folder / "generation_config.json").read_text())
    gen.pop("decoder_start_token_id", None)
    (folder / "generation_config.json").write_text(json.dumps(gen))
    with pytest.raises(ValueError, match=r"config.json's token ids give: decoder_start_token_id must be a token id "
                                         r"in \[0, 48\)"):
        OnnxT5.from_pretrained(folder)


def test_verify_finds_a_changed_file_of_the_same_size(folder):
    weights = folder / data_name(DECODER_WITH_PAST)
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # a byte of a weight: the graph still loads, with another weight
    weights.write_bytes(bytes(data))
    model = OnnxT5.from_pretrained(folder)  # the cheap checks cannot see it
    with pytest.raises(ValueError, match=rf"{data_name(DECODER_WITH_PAST)} differs from what the export wrote "
                                         r"\(sha256\)"):
        model.verify()
    with pytest.raises(ValueError, match=rf"{data_name(DECODER_WITH_PAST)} differs.*Copy the folder again whole, or "
                                         rf"{REEXPORT}"):
        OnnxT5.from_pretrained(folder, verify=True)


def test_corrupt_tokenizer_json_is_named(folder):
    (folder / "tokenizer.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"tokenizer.json cannot be read"):
        _ = OnnxT5.from_pretrained(folder).tokenizer


@pytest.mark.parametrize("kwargs, error, match", [
    ({"quantized": "yes"}, TypeError, "quantized must be True or False"),
    ({"threads": 0}, ValueError, "threads must be an integer from 1 to 1024"),
    ({"threads": 1.5}, ValueError, "threads must be an integer from 1 to 1024"),
    ({"threads": 10**9}, ValueError, "threads must be an integer from 1 to 1024"),
    ({"providers": "CPUExecutionProvider"}, TypeError, r"providers must be a list, e.g. \['CPUExecutionProvider'\]"),
    ({"providers": ["NoSuchExecutionProvider"]}, ValueError,
     r"providers \['NoSuchExecutionProvider'\] are not available in this onnxruntime \(available: .*CPU"),
])
def test_bad_load_options_are_named(whole, kwargs, error, match):
    with pytest.raises(error, match=rf"^OnnxT5.from_pretrained: {match}"):
        OnnxT5.from_pretrained(whole, **kwargs)


def test_a_folder_that_is_not_a_path_is_named():
    with pytest.raises(TypeError, match=r"^OnnxT5.from_pretrained: folder must be a path, got 5"):
        OnnxT5.from_pretrained(5)


def test_from_staged_loads_graphs_without_export_meta(folder, runtime, batch):
    """What the exporter's int8 check runs on: graphs written before export_meta.json."""
    (folder / META_FILE).unlink()
    ids, mask = batch(LENGTHS)
    np.testing.assert_array_equal(OnnxT5.from_staged(folder).generate(ids, mask, max_new_tokens=4),
                                  runtime.generate(ids, mask, max_new_tokens=4))
    with pytest.raises(ValueError, match=r"load it with OnnxT5\.from_pretrained"):
        OnnxT5.from_staged(folder).verify()


# ---- generate's arguments -----------------------------------------------------------------------------------------
BAD_OPTIONS = [
    ({"length_penalty": float("nan"), "num_beams": 2}, ValueError, "length_penalty must be finite, got nan"),
    ({"length_penalty": float("inf")}, ValueError, "length_penalty must be finite"),
    ({"max_new_tokens": 2.5}, TypeError, r"max_new_tokens must be an integer, got 2.5 \(float\)"),
    ({"max_new_tokens": "3"}, TypeError, r"max_new_tokens must be an integer, got '3' \(str\)"),
    ({"max_new_tokens": True}, TypeError, "max_new_tokens must be an integer, got True"),
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be >= 1, got 0"),
    ({"max_new_tokens": 2**70}, ValueError, r"max_new_tokens must be >= 1 and < 2\*\*62"),
    ({"max_length": 1}, ValueError, "max_length must be >= 2, got 1 \\(it counts the decoder start token"),
    ({"min_new_tokens": 5, "max_new_tokens": 3}, ValueError, "min_new_tokens=5 must be <= max_new_tokens=3"),
    ({"min_length": 9, "max_new_tokens": 3}, ValueError, r"min_length=9 must be <= max_new_tokens=3 \(max_length"),
    ({"min_new_tokens": -1}, ValueError, "min_new_tokens must be >= 0"),
    ({"num_beams": 0}, ValueError, "num_beams must be >= 1, got 0"),
    ({"num_beams": 2.0}, TypeError, "num_beams must be an integer"),
    ({"num_return_sequences": 0}, ValueError, "num_return_sequences must be >= 1"),
    ({"num_beams": 2, "num_return_sequences": 3}, ValueError, r"num_return_sequences \(3\) must be <= num_beams"),
    ({"temperature": 0.0, "do_sample": True}, ValueError, r"temperature must be > 0 \(at least 1e-30: .*\), got 0.0 "
                                                          r"\(for the most likely tokens, .* do_sample=False\)"),
    ({"temperature": -1.0}, ValueError, "temperature must be > 0"),
    ({"temperature": 1e-40, "do_sample": True}, ValueError, "temperature must be > 0 .*got 1e-40"),
    ({"temperature": float("inf"), "do_sample": True}, ValueError, "temperature must be finite"),
    ({"top_p": 0.0, "do_sample": True}, ValueError, r"top_p must be in \(0, 1\], got 0.0"),
    ({"top_p": 1.5, "do_sample": True}, ValueError, r"top_p must be in \(0, 1\], got 1.5"),
    ({"top_k": -1, "do_sample": True}, ValueError, "top_k must be >= 0, got -1"),
    ({"repetition_penalty": 0.0}, ValueError, "repetition_penalty must be > 0"),
    ({"repetition_penalty": 1e-40, "num_beams": 2}, ValueError, "repetition_penalty must be > 0 .*got 1e-40"),
    ({"repetition_penalty": "high"}, TypeError, "repetition_penalty must be a number"),
    ({"no_repeat_ngram_size": -1}, ValueError, "no_repeat_ngram_size must be >= 0"),
    ({"seed": -1}, ValueError, "seed must be >= 0"),
    ({"seed": 1.5}, TypeError, "seed must be an integer"),
    ({"do_sample": "yes"}, TypeError, "do_sample must be True or False"),
    ({"early_stopping": "yes"}, ValueError, "early_stopping must be True, False or 'never'"),
    ({"decoder_start_token_id": 48}, ValueError, r"decoder_start_token_id must be a token id in \[0, 48\)"),
    ({"decoder_start_token_id": -1}, ValueError, r"decoder_start_token_id must be a token id in \[0, 48\)"),
    ({"pad_token_id": 1000}, ValueError, r"pad_token_id must be a token id in \[0, 48\)"),
    ({"eos_token_id": [1, 48]}, ValueError, r"eos_token_id ids must be in \[0, 48\)"),
    ({"eos_token_id": "1"}, ValueError, "eos_token_id must be a token id or a list of token ids"),
    ({"eos_token_id": [1.0]}, ValueError, "eos_token_id must be a token id or a list of token ids"),
    ({"num_beam_groups": 2}, TypeError, r"unsupported argument\(s\) \['num_beam_groups'\]"),
    ({"num_beams": 2, "length_penalty": -1e30}, ValueError,
     r"length_penalty=-1e\+30 with max_new_tokens=20 \(the default\): .* 20 \*\* -1e\+30 is beyond float32's "
     r"range; keep \|length_penalty\| <= 23.1"),
    ({"num_beams": 2, "max_new_tokens": 10**8, "length_penalty": 4.0}, ValueError,
     r"length_penalty=4 with max_new_tokens=100000000: .*keep \|length_penalty\| <= 3.75"),
    ({"num_beams": 3, "do_sample": True, "top_k": 1}, ValueError,
     r"beam sampling draws 6 candidates per step without replacement .* but top_k=1 leaves fewer: use top_k >= 6"),
]


@pytest.mark.parametrize("kwargs, error, match", [c[:3] for c in BAD_OPTIONS],
                         ids=[",".join(f"{k}={v!r}" for k, v in c[0].items()) for c in BAD_OPTIONS])
def test_bad_options_are_refused_before_anything_runs(runtime, batch, kwargs, error, match):
    ids, mask = batch(LENGTHS)
    with pytest.raises(error, match=rf"^OnnxT5.generate: .*{match}"):
        runtime.generate(ids, mask, **kwargs)


def test_beam_sampling_left_with_too_few_tokens_says_so(runtime, batch):
    """top_p decides per step how many tokens keep a probability: too few for the draw is found while decoding
    (transformers' torch.multinomial fails there too)."""
    ids, mask = batch(LENGTHS)
    with pytest.raises(ValueError, match=r"^OnnxT5.generate: beam sampling draws 6 candidates per step without "
                                         r"replacement, but .* left 2 tokens with a non-zero probability: raise top_p"):
        runtime.generate(ids, mask, do_sample=True, num_beams=3, top_p=1e-9, max_new_tokens=3)


def test_nothing_runs_before_every_argument_is_checked(whole, batch):
    runtime = OnnxT5.from_pretrained(whole)
    runtime.encoder = None  # any graph call would fail with an AttributeError
    ids, mask = batch(LENGTHS)
    with pytest.raises(ValueError, match="attention_mask rows 0 attend to no token"):
        runtime.generate(ids, np.where(np.arange(5)[:, None] == 0, 0, mask), max_new_tokens=3)
    with pytest.raises(TypeError, match="max_new_tokens must be an integer"):
        runtime.generate(ids, mask, max_new_tokens=3.0)


def test_several_bad_options_are_named_at_once(runtime, batch):
    ids, mask = batch(LENGTHS)
    with pytest.raises(ValueError, match=r"num_beams must be >= 1.*; top_p must be in"):
        runtime.generate(ids, mask, num_beams=0, top_p=2.0)


def test_numpy_integers_and_floats_are_accepted(runtime, batch):
    ids, mask = batch(LENGTHS)
    want = runtime.generate(ids, mask, max_new_tokens=4, num_beams=2, length_penalty=0.8, early_stopping=True)
    got = runtime.generate(ids, mask, max_new_tokens=np.int64(4), num_beams=np.int32(2),
                           length_penalty=np.float32(0.8), early_stopping=np.bool_(True))
    np.testing.assert_array_equal(got, want)


# ---- generate's inputs --------------------------------------------------------------------------------------------
def _bad_inputs(batch) -> list[tuple[object, object, type, str]]:
    ids, mask = batch(LENGTHS)
    mask2, mask_neg, mask_empty = mask.copy(), mask.copy(), mask.copy()
    mask2[0, 0] = 2
    mask_neg[1, 0] = -1
    mask_empty[2] = 0
    ids_big, ids_neg = ids.copy(), ids.copy()
    ids_big[3, 0] = 48
    ids_neg[0, 0] = -5
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 2, "a": 5, "b": 6}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    encodings = tokenizer.encode_batch(["a b", "b a"])
    return [
        (np.zeros((0, 5), np.int64), None, ValueError, r"input_ids has no rows \(shape \(0, 5\)\)"),
        ([], None, ValueError, r"input_ids is empty"),
        (np.zeros((2, 0), np.int64), None, ValueError, r"the rows of input_ids hold no tokens \(shape \(2, 0\)\)"),
        ([[], []], None, ValueError, r"the rows of input_ids hold no tokens"),
        ([[5, 6, 7], [5, 6]], None, ValueError, r"the rows of input_ids have different lengths \(3, 2\): pad"),
        ([[5, 6], [5, 6]], [[1, 1], [1]], ValueError, r"the rows of attention_mask have different lengths \(2, 1\)"),
        ([5, 6, 7], None, ValueError, r"must be a 2-D integer array .*for one sequence, pass \[ids\]"),
        (np.zeros((1, 2, 3), np.int64), None, ValueError, r"must be a 2-D integer array"),
        (ids.astype(np.float32), mask, TypeError, r"input_ids must be a 2-D integer array .* of float32"),
        (ids > 5, mask, TypeError, r"input_ids must be a 2-D integer array .* of bool"),
        ("translate this", None, TypeError, r"input_ids must be token ids, got text: tokenize it first"),
        (["translate this"], None, TypeError, r"input_ids must be token ids, got text"),
        (ids_big, mask, ValueError, r"input_ids hold ids outside \[0, 48\) \(min \d+, max 48, rows 3\)"),
        (ids_neg, mask, ValueError, r"input_ids hold ids outside \[0, 48\) \(min -5, max \d+, rows 0\)"),
        (ids, mask2, ValueError, r"attention_mask holds 2; its values must be 1 .* or 0"),
        (ids, mask_neg, ValueError, r"attention_mask holds -1; its values must be 1"),
        (ids, mask.astype(np.float32), TypeError, r"attention_mask must be a 2-D integer or boolean array"),
        (ids, mask[:, :4], ValueError, r"attention_mask has shape \(5, 4\), input_ids \(5, 9\)"),
        (ids, mask_empty, ValueError, r"attention_mask rows 2 attend to no token"),
        (None, None, TypeError, r"input_ids is None"),
        ({"input_ids": ids, "attention_mask": mask}, None, TypeError, r"input_ids is a mapping .*enc\['input_ids'\]"),
        (encodings, None, TypeError, r"input_ids holds tokenizers Encodings: pass \[e.ids for e in batch\]"),
        ([[5, None]], None, TypeError, r"input_ids must be a 2-D integer array .* of object"),
    ]


BAD_INPUT_IDS = ["0-rows", "empty-list", "0-tokens", "empty-rows", "ragged-ids", "ragged-mask", "1-D", "3-D",
                 "float-ids", "bool-ids", "text", "list-of-text", "id-past-vocab", "negative-id", "mask-2",
                 "mask-minus-1", "float-mask", "mask-shape", "mask-row-of-zeros", "none", "mapping", "encodings",
                 "none-in-a-row"]


@pytest.mark.parametrize("case", range(len(BAD_INPUT_IDS)), ids=BAD_INPUT_IDS)
def test_bad_inputs_are_refused_with_their_problem(runtime, batch, case):
    ids, mask, error, match = _bad_inputs(batch)[case]
    with pytest.raises(error, match=rf"^OnnxT5.generate: .*{match}"):
        runtime.generate(ids, mask, max_new_tokens=3)


def test_a_boolean_attention_mask_is_accepted(runtime, batch):
    ids, mask = batch(LENGTHS)
    np.testing.assert_array_equal(runtime.generate(ids, mask.astype(bool), max_new_tokens=4),
                                  runtime.generate(ids, mask, max_new_tokens=4))


# ---- memory follows what is generated -----------------------------------------------------------------------------
@pytest.mark.parametrize("max_new_tokens", [10**8, 10**12])
@pytest.mark.parametrize("num_beams", [1, 3], ids=["greedy", "beam3"])
def test_a_huge_max_new_tokens_costs_only_what_is_generated(runtime, batch, max_new_tokens, num_beams):
    """Every token is an EOS here, so each sequence ends at its first token: buffers of max_length columns would need
    gigabytes (greedy: 5 x 10**8 int64), growing ones a few kilobytes."""
    ids, mask = batch(LENGTHS)
    tracemalloc.start()
    try:
        out = runtime.generate(ids, mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                               eos_token_id=list(range(48)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (len(LENGTHS), 2)
    assert peak < 20 * 2**20, f"peak {peak / 2**20:.1f} MiB"


@pytest.mark.parametrize("kwargs", [{"max_new_tokens": 11}, {"max_new_tokens": 11, "num_beams": 3},
                                    {"max_new_tokens": 9, "num_beams": 4, "num_return_sequences": 2,
                                     "early_stopping": "never", "length_penalty": 0.6}],
                         ids=["greedy", "beam3", "beam4-never"])
def test_growing_buffers_decode_what_transformers_decodes(tied, whole, batch, monkeypatch, kwargs):
    """Buffers that start at 2 columns and double on the way (2, 4, 8, then max_length) give transformers' tokens."""
    from export.runtime import columns

    monkeypatch.setattr(columns, "FIRST_COLUMNS", 2)
    ids, mask = batch(LENGTHS)
    with torch.no_grad():
        want = tied.model.generate(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                                   **kwargs).numpy()
    np.testing.assert_array_equal(OnnxT5.from_pretrained(whole).generate(ids, mask, **kwargs), want)
