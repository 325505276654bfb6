"""The folder a hub repository will hold, staged from the student, its ONNX export and its evaluation.

    config.json  generation_config.json  model.safetensors  tokenizer files    transformers loads the repo
    distill_meta.json                  how the student was made (teacher, layers copied, recipe, steps)
    onnx/encoder_model.onnx  onnx/decoder_model.onnx  onnx/decoder_with_past_model.onnx   fp32, optimum's names
    onnx/decoder_model_merged.onnx     both decoders, each weight once: what transformers.js loads
    onnx/decoder_cross_kv_model.onnx   the first step's cross-attention K/V: OnnxT5 serves both steps with it and
                                       decoder_with_past_model.onnx, each weight once
    onnx/search_model*.onnx            one-row greedy search in one graph (onnxruntime's BeamSearch op around the
                                       graphs above, reading their weight files), when the export kept it
    onnx/decoder_shared_cache_model*.onnx   beam search's steps with the cache appended in place (the with-past
                                       graph's weights), when the export kept it
    onnx/*.onnx_data                   each graph's weights (external data)
    onnx/*_quantized.onnx              int8 (transformers.js picks these with `dtype: "q8"`)
    onnx/*_q4.onnx                     4-bit weights, when the export has them (--int4; transformers.js `dtype: "q4"`)
    onnx/config.json generation_config.json tokenizer.json export_meta.json   so `OnnxT5.from_pretrained(repo/onnx)`
    README.md                          the model card (publish/card.py)
    publish_manifest.json              every other file with its size and sha256 (kept here, not uploaded)

The folder is written in a hidden staging sibling (`distill.files.staged_dir`), checked (publish/check.py) and only
then put in place, whole. An existing `--out` is replaced only when it is empty or exactly what its
publish_manifest.json lists; anything else (a git checkout, a model or export folder, a user's files) is refused
before any work, naming what is in the way.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from distill.files import FILES_KEY, check_output, file_manifest, replace_dir, sha256_file, staged_dir
from export.layout import (
    CROSS_KV,
    DECODER_MERGED,
    ENCODER,
    GRAPHS,
    META_FILE,
    ONE_ROW,
    ONE_ROW_SHARED,
    QUANTIZED,
    SEARCH,
    SHARED_CACHE,
    TOKENIZER_FILES,
    data_name,
    quantized_name,
)
from export.layout import FILES_KEY as EXPORT_FILES_KEY
from publish.card import find_variants, is_hub_id, model_card
from publish.check import check_staged
from publish.errors import PublishError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
ONNX_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
MANIFEST = "publish_manifest.json"  # what `stage` wrote: an earlier staged folder may be replaced, nothing else
OUT_WHAT = "an earlier `python -m publish` folder"


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    if path.is_dir():
        raise PublishError(f"{path} is a folder, not a JSON file ({what}). {fix}")
    if not path.is_file():
        raise PublishError(f"{path} does not exist ({what}). {fix}")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise PublishError(f"{path} cannot be read as JSON ({what}: {error}). {fix}") from None
    if not isinstance(data, dict):
        raise PublishError(f"{path} does not hold a JSON object ({what}). {fix}")
    return data


RESULTS_KEYS = {"variants": dict, "dataset": dict, "generation": dict, "headline_metrics": list, "environment": dict,
                "reference": str}  # what the card reads from results.json


def _check_results(results: dict[str, Any], path: Path) -> None:
    """PublishError naming what `results` lacks of what `python -m eval` writes and the card reads."""
    fix = "Give the results.json that `python -m eval` wrote (make eval), unedited."
    wrong = [f"{key} ({kind.__name__})" for key, kind in RESULTS_KEYS.items() if not isinstance(results.get(key), kind)]
    if wrong:
        raise PublishError(f"{path} is not an evaluation's results: it lacks {', '.join(wrong)}. {fix}")
    for name, v in results["variants"].items():
        if not isinstance(v, dict) or not isinstance(v.get("kind"), str) or not isinstance(v.get("path"), str):
            raise PublishError(f"{path}: variant {name!r} is not a mapping with a kind and a path. {fix}")


def _onnx_files(onnx: Path, listed: dict[str, Any], staged: Path, fix: str) -> dict[str, Any]:
    """The export's file list (`listed`) for the files copied from `onnx` to `staged`, each copy checked against it:
    the staged graphs are the ones the export validated."""
    copied = sorted(p.name for p in staged.iterdir())
    changed = [name for name in copied if not isinstance(listed.get(name), dict)
               or (staged / name).stat().st_size != listed[name].get("bytes")
               or sha256_file(staged / name) != listed[name].get("sha256")]
    if changed:
        raise PublishError(f"{onnx} was changed after it was exported ({', '.join(changed)} not as its {META_FILE} "
                           f"lists). {fix}")
    return {name: listed[name] for name in copied}


def _copy(src: Path, dst: Path, names: tuple[str, ...], required: tuple[str, ...], what: str, fix: str) -> None:
    missing = [n for n in required if not (src / n).is_file()]
    if missing:
        raise PublishError(f"{src} lacks {', '.join(missing)} ({what}). {fix}")
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _transformers_js_config(staged: Path) -> None:
    """Tell transformers.js which graphs keep their weights in a data file: it loads `X.onnx_data` beside `X.onnx` only
    when config.json's `transformers.js_config.use_external_data_format` names X (one chunk), and the export's graphs
    always do."""
    path = staged / "config.json"
    config = json.loads(path.read_text())
    graphs = [g for name in (ENCODER, DECODER_MERGED) for g in (name, *(quantized_name(name, k) for k in QUANTIZED))]
    config["transformers.js_config"] = {"use_external_data_format": {
        g: 1 for g in graphs if (staged / "onnx" / data_name(g)).is_file()}}
    path.write_text(json.dumps(config, indent=2) + "\n")


def _public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """distill_meta.json without this machine's paths (the checkpoint the student came from)."""
    meta = json.loads(json.dumps(meta))
    meta.get("training", {}).pop("best_checkpoint", None)
    return meta


def stage(model: Path, onnx: Path, results_file: Path, repo_id: str, out: Path, license_: str = "apache-2.0",
          base_model: str | None = None) -> Path:
    """Write the hub folder to `out` (through a staging sibling, moved into place when complete and checked); an
    existing `out` must be empty or an earlier staged folder (its publish_manifest.json), else PublishError."""
    if not REPO_ID.match(repo_id):
        raise PublishError(f"repo id {repo_id!r} is not `namespace/name` (letters, digits, '.', '_', '-'; "
                           "e.g. you/t5-small-6-2).")
    meta = _read_json(model / "distill_meta.json", "the student's provenance",
                      "Publish a student made by `make distill` or `python -m distill.student`.")
    export_meta = _read_json(onnx / "export_meta.json", "the ONNX export",
                             f"Export it first: make export MODEL={model} OUT={onnx}")
    export_fix = f"Export it again: make export MODEL={model} OUT={onnx}"
    if not isinstance(export_meta.get(EXPORT_FILES_KEY), dict):
        raise PublishError(f"{onnx / META_FILE} lists no files: {onnx} is not a complete export of this version of "
                           f"`python -m export`. {export_fix}")
    results = _read_json(results_file, "the evaluation's results",
                         "Evaluate the student first: make eval (its config must list the student and its exports).")
    _check_results(results, results_file)
    found = find_variants(results, model, onnx)
    if found["student"] is None:
        raise PublishError(f"{results_file} holds no torch variant at {model}: the card's numbers must be the "
                           f"student's. Evaluate it (a config listing `path: {model}`) and try again.")
    graphs = (*GRAPHS, DECODER_MERGED, CROSS_KV)
    quantized = tuple(quantized_name(g) for g in graphs)
    q4 = tuple(quantized_name(g, "int4") for g in graphs)  # published when the export has them, not required
    one_row = (ONE_ROW,)  # OnnxT5's one-row steps on the int8 graphs; published when the export has it
    # the one-row greedy search in one graph, per kind, when the export kept it; its weights are the graphs' files
    search = (SEARCH, *(quantized_name(SEARCH, kind) for kind in ("int8", "int4")))
    search += (SHARED_CACHE, *(quantized_name(SHARED_CACHE, kind) for kind in ("int8", "int4")))  # the same: searches
    search += (ONE_ROW_SHARED,)  # the one-row graph's, on its data file
    weights = tuple(data_name(g) for g in graphs + quantized + q4 + one_row)  # each graph's external data, if any
    base_model = base_model or (meta.get("teacher") if is_hub_id(meta.get("teacher")) else None)
    out = out.expanduser().resolve()
    check_output(out, MANIFEST, OUT_WHAT, error=PublishError)
    with staged_dir(out) as staged:
        _copy(model, staged, MODEL_FILES + TOKENIZER_FILES, (*MODEL_FILES, "tokenizer.json"), "the student",
              "It must be a save_pretrained folder with safetensors weights and a fast tokenizer.")
        _copy(onnx, staged / "onnx", graphs + quantized + q4 + one_row + search + weights + ONNX_SIDE_FILES,
              graphs + quantized, "fp32 and int8 graphs",
              f"Export with int8 (this version writes {DECODER_MERGED} and {CROSS_KV}): "
              f"make export MODEL={model} OUT={onnx}")
        _transformers_js_config(staged)
        (staged / "distill_meta.json").write_text(json.dumps(_public_meta(meta), indent=2) + "\n")
        export_meta = {k: v for k, v in export_meta.items() if k not in ("source", "source_fingerprint", "command")}
        export_meta[EXPORT_FILES_KEY] = _onnx_files(onnx, export_meta[EXPORT_FILES_KEY], staged / "onnx", export_fix)
        (staged / "onnx" / META_FILE).write_text(json.dumps({"source": repo_id, **export_meta}, indent=2) + "\n")
        try:
            card = model_card(repo_id, meta, results, found, license_, base_model)
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as error:
            raise PublishError(f"the model card cannot be built from {results_file} and {model / 'distill_meta.json'}"
                               f": {type(error).__name__}: {error} (a value missing or of another type). Both must be "
                               "as `python -m eval` and `python -m distill` write them; evaluate or build the student "
                               "again.") from None
        card.save(staged / "README.md")
        check_staged(staged, results.get("dataset", {}).get("task_prefix") or "")
        manifest = {"repo_id": repo_id, FILES_KEY: file_manifest(staged, skip=(MANIFEST,))}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        replace_dir(staged, out, manifest=MANIFEST, what=OUT_WHAT)
    return out
