"""What `OnnxT5.from_pretrained` checks an export folder against before it trusts it: export_meta.json.

export_meta.json, written last by `python -m export`, lists every file of the export with its size and sha256, the
model's shape and a random export id that each graph also carries in its ONNX metadata. Loading checks what costs
nothing: each graph's size, its export id and its input/output shapes against the model's; checksums only on request
(`verify`). So a folder whose export did not finish, a graph copied in from another export (even of a model of the
same shape) or a truncated file is refused, with the fix, instead of decoding something else.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from export.layout import (
    CROSS_KV,
    DECODER,
    DECODER_MERGED,
    DECODER_WITH_PAST,
    ENCODER,
    ENCODER_DIGEST_KEY,
    EXPORT_ID_KEY,
    FILES_KEY,
    GRAPH_EXPORT_ID,
    META_FILE,
    MODEL_KEY,
    SHARED_CACHE_INPUTS,
    USE_CACHE_BRANCH,
)
from export.runtime.settings import read_json_object

# what onnxruntime raises for a file that is not a readable ONNX graph (none of them subclass RuntimeError)
LOAD_ERRORS = (ort_state.InvalidProtobuf, ort_state.InvalidGraph, ort_state.Fail, ort_state.NoModel)
SHAPE_KEYS = ("num_decoder_layers", "num_heads", "d_kv", "d_model", "vocab_size")  # what the graphs' shapes show


def reexport_hint(folder: Path, source: Any = None) -> str:
    """The command that rebuilds `folder`, with the model it was exported from when that is known."""
    model = source if isinstance(source, str) and source else "MODEL"
    return f"re-export with `python -m export --model {model} --out {folder}`"


def _staging_note(folder: Path) -> str:
    """A hint when `folder` lies in the hidden staging folder of an export that did not finish."""
    if any(re.match(r"\..+\.(staging|tmp)\.", part) for part in folder.resolve().parts):
        return (" It lies in the hidden staging folder of an export that did not finish (`python -m export` builds "
                "the folder there and renames it into place when it is complete): delete that staging folder.")
    return ""


@dataclass(frozen=True)
class ExportMeta:
    """The parts of export_meta.json the runtime checks against."""

    path: Path
    files: dict[str, dict[str, Any]]
    model: dict[str, int]
    export_id: str
    source: Any
    encoder_digest: str | None = None  # exports before it recorded none

    def fix(self) -> str:
        return reexport_hint(self.path.parent, self.source)


def read_meta(folder: Path) -> ExportMeta:
    """export_meta.json of `folder`; FileNotFoundError when absent, ValueError when not JSON or incomplete."""
    path = folder / META_FILE
    fix = reexport_hint(folder)
    if not path.is_file():
        raise FileNotFoundError(f"OnnxT5: {folder} has no {META_FILE}, so it is not a complete export "
                                f"(`python -m export` writes it last); {fix}.{_staging_note(folder)}")
    data = read_json_object(path, fix)
    fix = reexport_hint(folder, data.get("source"))
    files, model, export_id = data.get(FILES_KEY), data.get(MODEL_KEY), data.get(EXPORT_ID_KEY)
    problems = []
    if not isinstance(files, dict) or not all(isinstance(v, dict) and isinstance(v.get("bytes"), int)
                                              for v in files.values()):
        problems.append(f'"{FILES_KEY}" (each file\'s bytes and sha256)')
    if not isinstance(model, dict) or not all(isinstance(model.get(k), int) and not isinstance(model.get(k), bool)
                                              and model[k] > 0 for k in SHAPE_KEYS):
        problems.append(f'"{MODEL_KEY}" (the model\'s {", ".join(SHAPE_KEYS)})')
    if not isinstance(export_id, str) or not export_id:
        problems.append(f'"{EXPORT_ID_KEY}"')
    if problems:
        raise ValueError(f"OnnxT5: {path} lacks {' and '.join(problems)}: it was written by an older or "
                         f"interrupted export, or edited; {fix}.")
    digest = data.get(ENCODER_DIGEST_KEY)
    return ExportMeta(path, cast(dict, files), {k: cast(dict, model)[k] for k in SHAPE_KEYS}, cast(str, export_id),
                      data.get("source"), digest if isinstance(digest, str) else None)


def check_sizes(folder: Path, meta: ExportMeta, names: list[str]) -> None:
    """Each of `names` is listed in export_meta.json with its current size (a cheap guard against truncation)."""
    problems = []
    for name in names:
        listed = meta.files.get(name)
        size = (folder / name).stat().st_size
        if listed is None:
            problems.append(f"{name} is not listed in {META_FILE}: it was not written by this export")
        elif listed["bytes"] != size:
            problems.append(f"{name} has {size} bytes, {META_FILE} says {listed['bytes']}: the file was truncated "
                            "or replaced after the export")
    if problems:
        raise ValueError(f"OnnxT5: {folder}: {'; '.join(problems)}. Copy the folder again whole, or "
                         f"{meta.fix()}.")


def open_session(path: Path, options: ort.SessionOptions, providers: list[Any], fix: str) -> ort.InferenceSession:
    """An onnxruntime session on `path`; a file onnxruntime cannot read is a ValueError naming it and the fix."""
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
        session.get_modelmeta()  # its strings are decoded here: a damaged one fails now, not during a check
        return session
    except (*LOAD_ERRORS, UnicodeDecodeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"OnnxT5: onnxruntime cannot load {path} ({first_line}): the file is corrupt or "
                         f"truncated; {fix}.") from None


def _shape_problems(graph: str, session: ort.InferenceSession, model: dict[str, int],
                    extra: tuple[str, ...] = ()) -> list[str]:
    """Where a graph's inputs and outputs disagree with the model's shape (static dimensions only); `extra`: inputs the
    graph may take besides its kind's."""
    layers, heads, d_kv, d_model, vocab = (model[k] for k in SHAPE_KEYS)
    ins = {i.name: i.shape for i in session.get_inputs()}
    outs = {o.name: o.shape for o in session.get_outputs()}
    kv = [f"{i}.{side}.{t}" for i in range(layers) for side in ("decoder", "encoder") for t in ("key", "value")]
    own = [name for name in kv if ".decoder." in name]
    want_in: dict[str, dict[int, int]] = {"input_ids": {}}
    want_out: dict[str, dict[int, int]] = {}
    if graph == CROSS_KV:
        want_in = {"encoder_hidden_states": {2: d_model}}
        want_out = {f"present.{n}": {1: heads, 3: d_kv} for n in kv if ".encoder." in n}
    elif graph == ENCODER:
        want_in |= {"attention_mask": {}}
        want_out = {"last_hidden_state": {2: d_model}}
    elif graph in (DECODER, DECODER_MERGED):
        want_in |= {"encoder_attention_mask": {}, "encoder_hidden_states": {2: d_model}}
        want_out = {"logits": {2: vocab}} | {f"present.{n}": {1: heads, 3: d_kv} for n in kv}
        if graph == DECODER_MERGED:  # both steps' inputs
            want_in |= {f"past_key_values.{n}": {1: heads, 3: d_kv} for n in kv} | {USE_CACHE_BRANCH: {}}
    else:
        want_in |= {"encoder_attention_mask": {}} | {f"past_key_values.{n}": {1: heads, 3: d_kv} for n in kv}
        want_out = {"logits": {2: vocab}} | {f"present.{n}": {1: heads, 3: d_kv} for n in own}
    problems = []
    for kind, have, want, prefix in (("inputs", ins, want_in, "past_key_values."), ("outputs", outs, want_out,
                                                                                    "present.")):
        n, need = sum(name.startswith(prefix) for name in have), sum(name.startswith(prefix) for name in want)
        if n != need:
            problems.append(f"{n} {prefix[:-1]} {kind}, where num_decoder_layers {layers} needs {need}")
    for kind, have, want in (("input", ins, want_in), ("output", outs, want_out)):
        missing = [name for name in want if name not in have]
        if missing:
            problems.append(f"no {kind} {', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}")
        for name, dims in want.items():
            shape = have.get(name) or []
            for axis, size in dims.items():
                got = shape[axis] if axis < len(shape) else None
                if isinstance(got, int) and got != size:
                    what = {1: "heads", 2: "vocabulary" if name == "logits" else "d_model", 3: "d_kv"}[axis]
                    problems.append(f"{kind} {name} has {what} {got}, the model {size}")
    if graph in (DECODER_WITH_PAST, DECODER_MERGED):
        unexpected = sorted(set(ins) - set(want_in) - set(extra))
        if unexpected:
            problems.append(f"unexpected input(s) {', '.join(unexpected[:4])}")
    return [*problems[:3], "..."] if len(problems) > 3 else problems


def check_graphs(folder: Path, meta: ExportMeta, sessions: dict[str, ort.InferenceSession],
                 files: dict[str, str], in_place: bool = False) -> None:
    """Each loaded graph carries the folder's export id, and its shapes fit export_meta.json's model.

    `sessions` and `files` are keyed by graph (ENCODER, ...); `files` gives the file each session was loaded from.
    `in_place`: DECODER_WITH_PAST's session is the shared-cache graph's (`export.shared_cache`), which also takes
    SHARED_CACHE_INPUTS.
    """
    check_export_ids(folder, meta, sessions, files)
    for graph, session in sessions.items():
        extra = SHARED_CACHE_INPUTS if in_place and graph == DECODER_WITH_PAST else ()
        shape = _shape_problems(graph, session, meta.model, extra)
        if shape:
            model = ", ".join(f"{k} {v}" for k, v in meta.model.items())
            raise ValueError(f"OnnxT5: {folder / files[graph]} does not fit {META_FILE}'s model ({model}): "
                             f"{'; '.join(shape)}; {meta.fix()}.")


def check_export_ids(folder: Path, meta: ExportMeta, sessions: dict[str, ort.InferenceSession],
                     files: dict[str, str]) -> None:
    """Each of `sessions` carries the folder's export id (keys and `files` as `check_graphs`'s)."""
    problems = []
    for graph, session in sessions.items():
        carried = session.get_modelmeta().custom_metadata_map.get(GRAPH_EXPORT_ID)
        if carried is None:
            problems.append(f"{files[graph]} carries no export id ({GRAPH_EXPORT_ID} in its ONNX metadata): it was "
                            f"not written by the export {META_FILE} describes")
        elif carried != meta.export_id:
            problems.append(f"{files[graph]} belongs to another export (its export id {carried}, {META_FILE}'s "
                            f"{meta.export_id})")
    if problems:
        raise ValueError(f"OnnxT5: {folder}: {'; '.join(problems)}. The folder mixes files of different exports; "
                         f"{meta.fix()}.")


def check_config(folder: Path, config: dict[str, Any], meta: ExportMeta) -> None:
    """config.json describes the model export_meta.json describes (it is what the token ids come from)."""
    differ = [f"{key} {config[key]!r} (export: {meta.model[key]})" for key in SHAPE_KEYS
              if config.get(key) is not None and config[key] != meta.model[key]]
    if differ:
        raise ValueError(f"OnnxT5: {folder / 'config.json'} is another model's: {', '.join(differ)}. Copy the "
                         f"export's config.json back, or {meta.fix()}.")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksums(folder: Path, meta: ExportMeta, required: list[str]) -> list[str]:
    """sha256 of every file export_meta.json lists and the folder holds (all of `required` must be there).

    Returns the names checked; ValueError naming every file that differs.
    """
    problems = [f"{name} is missing" for name in required if not (folder / name).is_file()]
    checked = []
    for name, listed in sorted(meta.files.items()):
        path = folder / name
        if not path.is_file():
            continue
        checked.append(name)
        want = listed.get("sha256")
        if not isinstance(want, str):
            problems.append(f"{name} has no sha256 in {META_FILE}")
        elif path.stat().st_size != listed["bytes"] or sha256(path) != want:
            problems.append(f"{name} differs from what the export wrote (sha256)")
    if problems:
        raise ValueError(f"OnnxT5: {folder}: {'; '.join(problems)}. Copy the folder again whole, or {meta.fix()}.")
    return checked
