"""Export a T5-family model to ONNX as three graphs with a key/value cache, checked against PyTorch before it is kept.

    python -m export --model models/teacher --out runs/export/teacher             # fp32
    python -m export --model runs/distill/student --out runs/export/student --int8 --int8-keep-fp32 lm_head,wo
    python -m export --model runs/distill/student --out runs/export/student --int8 --int4   # + 4-bit graphs

The folder follows optimum's layout and input/output names (so `ORTModelForSeq2SeqLM` and transformers.js load it):

    encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx   the graphs (`export.graphs`)
    decoder_model_merged.onnx      both decoders in one graph, each weight once (`export.merge`): what
                                   transformers.js and optimum load
    decoder_cross_kv_model.onnx    the first step's cross-attention K/V alone (`export.cross_kv`): OnnxT5 serves
                                   both steps with it and the with-past graph, each decoder weight once
    search_model.onnx              one row's greedy decoding loop in one graph: onnxruntime's BeamSearch op around
                                   the cross-attention K/V and with-past graphs, their weights not copied
                                   (`export.search_graph`); kept only if its tokens are the Python loop's
    decoder_shared_cache_model.onnx   the with-past graph whose self-attention appends to buffers in place and
                                   follows beams by an index: what OnnxT5's greedy and beam search step on
                                   (`export.shared_cache`); its weights are the with-past graph's file
    *_quantized.onnx               with --int8: dynamic int8 MatMuls and embeddings (`export.quantize`)
    decoder_with_past_one_row_quantized.onnx   with --int8: the with-past graph as 8-bit blocks, what OnnxT5 steps
                                   one-row calls on (`export.one_row`)
    decoder_shared_cache_one_row_quantized.onnx   with --int8: the one-row graph with its cache in place, as above
    *_q4.onnx                      with --int4: 4-bit block-wise MatMul weights, int8 embeddings (`export.int4`)
    *_fp16.onnx / *_bf16.onnx      with --dtype: converted from fp32, overflow-prone ops kept fp32 (`export.precision`)
    config.json generation_config.json tokenizer files    what `OnnxT5` and transformers read
    export_meta.json               opset, versions, max |diff| against PyTorch per graph and output, sizes,
                                   int8 and int4 settings and token agreement

Everything is written to a hidden staging folder next to `--out` (`distill.files.staged_dir`) and renamed into place
only after onnxruntime matched PyTorch on a padded batch (first decoder step with several tokens, then several steps
with past), so a crash or a failed check never leaves a folder that looks complete; a killed run's staging folder is
swept by the next run. export_meta.json lists every other file with its size and sha256 (`files`) and an id
(`export_id`) that every graph carries in its ONNX metadata, so that the runtime can tell a whole export from a mix.

An existing `--out` is replaced only when it is exactly an earlier export (what its export_meta.json lists, unchanged)
or empty; anything else is refused before any work, naming what is in the way. An export without --int8 (--int4) over
an earlier --int8 (--int4) export is refused too, naming the graphs it would delete: add the option, or remove them
first.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import platform
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import ModelError
from distill.files import check_output, file_manifest, replace_dir, staged_dir
from distill.models import load_config, load_t5, load_tokenizer
from export.cross_kv import write_cross_kv
from export.errors import ExportError
from export.int4 import DEFAULT_BLOCK_SIZE, check_options, quantize_int4
from export.layout import (
    CROSS_KV,
    DECODER,
    DECODER_MERGED,
    DECODER_WITH_PAST,
    DTYPES,
    ENCODER,
    ENCODER_DIGEST_KEY,
    EXPORT_ID_KEY,
    FILES_KEY,
    GRAPH_EXPORT_ID,
    GRAPHS,
    META_FILE,
    ONE_ROW,
    ONE_ROW_SHARED,
    QUANTIZED,
    TOKENIZER_FILES,
    dtype_name,
    quantized_name,
    source_fingerprint,
    source_id,
)
from export.merge import merge_decoders
from export.one_row import one_row_agreement, write_one_row
from export.precision import check_providers_for, convert_folder, dtype_agreement
from export.quantize import INT8_OPS, agreement, quantize
from export.resources import predict, require
from export.runtime import OnnxT5
from export.runtime.model import quantized_kind
from export.search_graph import CHECK_NEW_TOKENS, search_agreement, token_ids, write_search_graph
from export.shared_cache import (
    one_row_shared_agreement,
    shared_cache_agreement,
    write_one_row_shared,
    write_shared_cache,
)
from export.trace import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export_graphs
from export.validate import Validation, reference, validate


def _copy_tokenizer(source: str, staged: Path, vocab_size: int, required: bool) -> list[str]:
    """Copy the tokenizer of `source` (a folder or hub id) into the export, after checking it fits the model.

    A folder without one is an error unless `required` is False: OnnxT5's `.tokenizer`, the eval harness and publish
    read `tokenizer.json` from the export, and a placeholder tokenizer would turn every word into <unk>.
    """
    try:
        tokenizer = load_tokenizer(source, vocab_size)
    except ModelError:
        if required:
            raise
        return []
    local = Path(source).expanduser()
    if local.is_dir():
        copied = [name for name in TOKENIZER_FILES if (local / name).is_file()]
        for name in copied:
            shutil.copy2(local / name, staged / name)
        if "tokenizer.json" in copied:
            return copied
    tokenizer.save_pretrained(staged)  # a hub id, or a folder holding only a slow tokenizer: write tokenizer.json
    return sorted(p.name for p in staged.iterdir() if p.name in TOKENIZER_FILES)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def encoder_digest(model: Any) -> str:
    """sha256 of what the encoder computes with: its settings and weights (the token embedding included), in order."""
    cfg = model.config
    digest = hashlib.sha256(json.dumps([getattr(cfg, k, None) for k in (
        "d_model", "d_kv", "d_ff", "num_layers", "num_heads", "feed_forward_proj", "layer_norm_epsilon",
        "relative_attention_num_buckets", "relative_attention_max_distance")]).encode())
    for name, tensor in sorted(model.get_encoder().state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().float().contiguous().numpy())  # its buffer: no copy of the embedding
    return digest.hexdigest()


def _meta(model: ModelFacts, model_name_or_dir: str, staged: Path, opset: int, check: Validation,
          diffs: dict[str, dict[str, float]], int8_meta: dict[str, Any] | None, tokenizer_files: list[str],
          command: str | None) -> dict[str, Any]:
    """What export_meta.json records: the source, how the graphs were made, how they compared, what the folder holds."""
    cfg = model.config
    return {
        "source": source_id(model_name_or_dir),
        "source_fingerprint": source_fingerprint(model_name_or_dir),
        ENCODER_DIGEST_KEY: model.encoder_digest,
        "command": command,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=False)",
        "versions": _versions(),
        "model": {k: getattr(cfg, k, None) for k in (
            "model_type", "num_layers", "num_decoder_layers", "d_model", "d_ff", "d_kv", "num_heads", "vocab_size",
            "feed_forward_proj", "tie_word_embeddings", "scale_decoder_outputs")}
        # transformers 5.x keeps tie_word_embeddings True for v1.1-style models; this says what the weights are
        | {"lm_head_is_shared_embedding": model.lm_head_is_shared_embedding},
        "validation": {"batch": len(check.enc_lengths), "encoder_lengths": list(check.enc_lengths),
                       "first_decoder_length": check.first_decoder_length, "past_steps": check.past_steps,
                       "new_tokens": check.new_tokens,
                       "atol_logits": check.atol, "rtol": check.rtol, "max_abs_diff": diffs},
        "int8": int8_meta,
        "tokenizer_files": tokenizer_files,
        "file_bytes": {p.name: p.stat().st_size for p in sorted(staged.iterdir())
                       if p.suffix in (".onnx", ".onnx_data")},
    }


def _search_graphs(staged: Path, kinds: list[str | None], check: Validation, config: Any) -> dict[str, Any]:
    """The search graph of each kind's graphs (`export.search_graph`), kept where its greedy tokens are the Python
    loop's on the validation batch; what export_meta.json records of them."""
    ids = token_ids(config)
    if isinstance(ids, str):
        return {"written": [], "not_written": ids}
    written, dropped = [], {}
    for kind in kinds:
        name = write_search_graph(staged, kind, *ids)
        differ = search_agreement(staged, kind, name, check, config)
        if differ:  # the tokens are the bar: a graph that gives others is not kept
            (staged / name).unlink()
            dropped[name] = differ
            warnings.warn(f"export: {name} not kept: its greedy tokens differ from the Python loop's "
                          f"({differ[0][:200]})", RuntimeWarning, stacklevel=2)
        else:
            written.append(name)
    return {"written": written, "tokens": dict(zip(("start", "eos"), ids, strict=True)),
            "not_kept": dropped, "checked_new_tokens": CHECK_NEW_TOKENS}


def _shared_cache_graphs(staged: Path, kinds: list[str | None], check: Validation, config: Any) -> dict[str, Any]:
    """The shared-cache graph of each kind's graphs (`export.shared_cache`): the fp32 one kept where its greedy and
    beam search tokens are the Python loop's on the validation batch, the int8 and 4-bit ones with their agreement
    recorded; and the one-row graph's, with its agreement with that graph's tokens; what export_meta.json records of
    them."""
    written, dropped, checks = [], {}, {}
    for kind in kinds:
        try:
            name = write_shared_cache(staged, kind)
        except ValueError as e:  # a with-past graph of another form (no fused attention): beam search copies
            dropped[str(kind or "fp32")] = [str(e)]
            continue
        checks[name] = shared_cache_agreement(staged, kind, name, check, config)
        if kind is None and checks[name]["differ"]:  # the tokens are the bar where the loop's are transformers'
            (staged / name).unlink()
            dropped[name] = checks[name]["differ"]
            warnings.warn(f"export: {name} not kept: its tokens differ from the Python loop's "
                          f"({checks[name]['differ'][0][:200]})", RuntimeWarning, stacklevel=2)
        else:
            written.append(name)
    if (staged / ONE_ROW).is_file():  # one-row calls, in place too
        try:
            name = write_one_row_shared(staged)
        except ValueError as e:
            dropped[ONE_ROW_SHARED] = [str(e)]
        else:
            checks[name] = one_row_shared_agreement(staged, check, config)
            written.append(name)
    return {"written": written, "not_kept": dropped, "checks": checks}


def stamp_export_id(path: Path, export_id: str) -> None:
    """Set the graph's `GRAPH_EXPORT_ID` metadata to `export_id` (rewritten only when it differs; external weights,
    if any, stay where they are)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    if {p.key: p.value for p in proto.metadata_props}.get(GRAPH_EXPORT_ID) == export_id:
        return
    kept = [p for p in proto.metadata_props if p.key != GRAPH_EXPORT_ID]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=GRAPH_EXPORT_ID, value=export_id)
    onnx.save(proto, str(path))


def check_out(out: Path, int8: bool, dtype: str = "fp32", int4: bool = False) -> None:
    """Refuse, before any work, an `out` that an export must not replace: anything but an empty folder or an earlier
    export as its export_meta.json lists it, or an export whose int8, int4 (or fp16/bf16) graphs this export would
    delete."""
    check_output(out, META_FILE, "an earlier export", FILES_KEY, error=ExportError)
    others = [name for d in DTYPES if d not in ("fp32", dtype) for name in (dtype_name(g, d) for g in GRAPHS)
              if (out / name).is_file()]
    if others:
        raise ExportError(f"{out} holds the graphs of an earlier --dtype export ({', '.join(others)}); this export "
                          "would delete them. Give that --dtype again, choose another --out, or remove them first.")
    for kind, wanted in (("int8", int8), ("int4", int4)):
        found = [name for name in (quantized_name(g, kind) for g in GRAPHS) if (out / name).is_file()]
        if found and not wanted:
            raise ExportError(f"{out} holds the {kind} graphs of an earlier --{kind} export ({', '.join(found)}); an "
                              f"export without --{kind} would delete them. Add --{kind} to make them again, choose "
                              "another --out, or remove them first.")


@dataclass(frozen=True)
class ModelFacts:
    """What export_meta.json needs of the model once its weights are freed."""

    config: Any
    lm_head_is_shared_embedding: bool
    encoder_digest: str


def default_keep_fp32(config: Any) -> tuple[str, ...]:
    """Modules whose MatMuls --int8 keeps fp32 unless told otherwise: each feed-forward output projection (`wo`) of a
    gated-GELU model (T5 v1.1, flan-t5, mT5). Activations entering `wo` are T5's known outliers (the reason fp16
    overflows there, transformers issue 9295); int8 there turned real checkpoints' outputs into nonsense
    (transformers issue 14351). The classic ReLU T5 quantizes whole."""
    return ("wo",) if getattr(config, "is_gated_act", False) else ()


def export(model_name_or_dir: str, out: Path | str, opset: int = DEFAULT_OPSET, int8: bool = False,
           int8_keep_fp32: tuple[str, ...] | None = None, check: Validation | None = None, command: str | None = None,
           tokenizer: str | None = None, require_tokenizer: bool = True, check_resources: bool = True,
           dtype: str = "fp32", int4: bool = False, int4_block_size: int = DEFAULT_BLOCK_SIZE,
           int4_keep_fp32: tuple[str, ...] | None = None, int4_keep_int8: tuple[str, ...] = (),
           fused_attention: bool = True) -> Path:
    """Export, validate and (optionally) quantize `model_name_or_dir` into `out`; returns `out`.

    `dtype` "fp16" or "bf16" also writes the graphs in that dtype (`export.precision`), checked against the fp32 ones.

    The tokenizer comes from `tokenizer` (a folder or hub id) or else from the model's own folder; a model without one
    is refused unless `require_tokenizer` is False (the graphs alone, for benchmarks on random weights).
    `int8_keep_fp32`: module names whose MatMuls stay fp32 with `int8` (None: `default_keep_fp32`, () for none).
    `int4` also writes 4-bit graphs (`export.int4`), blocks of `int4_block_size`; `int4_keep_fp32` (None:
    `default_keep_fp32`, less what `int4_keep_int8` names) and `int4_keep_int8` name the modules whose MatMuls stay
    fp32 or become int8 there instead.
    `fused_attention`: each attention as onnxruntime's MultiHeadAttention (`export.fuse_attention`); False keeps the
    traced standard ops, for runtimes without onnxruntime's contrib ops.
    `check_resources`: refuse up front when the memory or the disk the sizes predict is not there (`export.resources`).

    `command` is recorded in export_meta.json (the CLI passes its own command line). An existing `out` is replaced
    only when it is empty or exactly an earlier export (`check_out`, checked first and again at the swap).
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset!r}: torch's TorchScript exporter writes opsets {MIN_OPSET} to {MAX_OPSET} "
                          f"and T5 needs {MIN_OPSET} or newer; choose one of those (default {DEFAULT_OPSET}).")
    out = Path(out).expanduser().resolve()
    check = check or Validation()
    if dtype not in DTYPES:
        raise ExportError(f"dtype {dtype!r}: choose one of {', '.join(DTYPES)}.")
    check_out(out, int8, dtype, int4)
    if dtype != "fp32":
        check_providers_for(dtype)  # bf16 cannot be checked without CUDA: refuse before any work
    if int4:
        check_options(int4_block_size, tuple(int4_keep_fp32 or ()), tuple(int4_keep_int8))
    config = load_config(model_name_or_dir)
    keep = default_keep_fp32(config) if int8_keep_fp32 is None else tuple(int8_keep_fp32)
    # a module named by int4_keep_int8 is int8 even where the default would keep it fp32
    keep4 = tuple(name for name in default_keep_fp32(config) if name not in int4_keep_int8) \
        if int4_keep_fp32 is None else tuple(int4_keep_fp32)
    if check_resources:
        require(predict(config.to_dict(), int8, keep, int4=int4, int4_keep=(keep4, tuple(int4_keep_int8)),
                        block_size=int4_block_size), out)
    model = load_t5(model_name_or_dir).float().eval()
    export_id = uuid.uuid4().hex
    with staged_dir(out) as staged:
        specs = export_graphs(model, staged, opset, fused_attention)
        for graph in GRAPHS:  # before the validation, so that the bytes checked are the bytes kept
            stamp_export_id(staged / graph, export_id)
        cases = reference(model, check)  # PyTorch's outputs, computed before onnxruntime loads any graph
        model.config.save_pretrained(staged)
        model.generation_config.save_pretrained(staged)
        facts = ModelFacts(model.config, model.lm_head.weight is model.shared.weight, encoder_digest(model))
        # the weights are in the graphs now: the validation, quantizing and the int8 check need only those, and the
        # torch weights and an onnxruntime session never hold memory together
        del model
        gc.collect()
        diffs = validate(cases, staged, specs, check)
        merge_decoders(staged, DECODER, DECODER_WITH_PAST, DECODER_MERGED)  # what transformers.js and optimum load
        diffs |= validate(cases, staged, specs, check, merged=DECODER_MERGED)
        write_cross_kv(staged, DECODER, CROSS_KV)  # what OnnxT5 serves the first step with, beside the with-past graph
        diffs |= validate(cases, staged, specs, check, cross_kv=CROSS_KV)
        tokenizer_files = _copy_tokenizer(tokenizer or model_name_or_dir, staged, facts.config.vocab_size,
                                          require_tokenizer)
        int8_meta = None
        if int8:
            excluded = quantize(staged, keep)
            for graph in GRAPHS:  # the quantizer keeps metadata_props; this makes sure of it
                stamp_export_id(staged / quantized_name(graph), export_id)
            # the two int8 decoders merged as the fp32 ones: quantizing is deterministic, so a weight both hold has
            # the same int8 bytes and scale in each, and is kept once
            merge_decoders(staged, *map(quantized_name, (DECODER, DECODER_WITH_PAST, DECODER_MERGED)))
            write_cross_kv(staged, quantized_name(DECODER), quantized_name(CROSS_KV))  # checked by `agreement`
            int8_meta = {"op_types_to_quantize": list(INT8_OPS), "weight_type": "QInt8",
                         "keep_fp32": list(keep),
                         "keep_fp32_is_default": int8_keep_fp32 is None,
                         "excluded_nodes": excluded,
                         **agreement(staged, check, facts.config, "int8")}
            one_row = write_one_row(staged, keep)  # what OnnxT5 steps one-row calls on (`export.one_row`)
            stamp_export_id(staged / ONE_ROW, export_id)
            int8_meta["one_row"] = one_row | one_row_agreement(staged, check, facts.config)
        int4_meta = None
        if int4:
            int4_meta = quantize_int4(staged, int4_block_size, keep4, tuple(int4_keep_int8))
            for graph in GRAPHS:  # the quantizers keep metadata_props; this makes sure of it
                stamp_export_id(staged / quantized_name(graph, "int4"), export_id)
            # for transformers.js (dtype "q4"), as the int8 ones: the 4-bit quantizer is deterministic too
            merge_decoders(staged, *(quantized_name(g, "int4") for g in (DECODER, DECODER_WITH_PAST, DECODER_MERGED)))
            write_cross_kv(staged, quantized_name(DECODER, "int4"), quantized_name(CROSS_KV, "int4"))
            int4_meta |= {"kept_is_default": int4_keep_fp32 is None and not int4_keep_int8,
                          **agreement(staged, check, facts.config, "int4")}
        kinds: list[str | None] = [None] + ["int8"] * int8 + ["int4"] * int4
        search_meta = _search_graphs(staged, kinds, check, facts.config)
        shared_meta = _shared_cache_graphs(staged, kinds, check, facts.config)
        precision = None
        if dtype != "fp32":
            converted = convert_folder(staged, dtype, GRAPHS)
            for graph in GRAPHS:
                stamp_export_id(staged / dtype_name(graph, dtype), export_id)
            precision = {"dtype": dtype, "graphs": converted, **dtype_agreement(staged, dtype, check, facts.config)}
        meta = _meta(facts, model_name_or_dir, staged, opset, check, diffs, int8_meta, tokenizer_files, command)
        meta["precision"] = precision
        meta["int4"] = int4_meta
        meta["fused_attention"] = fused_attention
        meta["search_graph"] = search_meta
        meta["shared_cache"] = shared_meta
        meta |= {EXPORT_ID_KEY: export_id, FILES_KEY: file_manifest(staged, skip=(META_FILE,))}
        (staged / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(staged, out, manifest=META_FILE, what="an earlier export", files_key=FILES_KEY)
    return out


def _read_meta(folder: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def load_or_export(name_or_dir: str | Path, onnx_path: str | Path, quantized: bool | str = False,
                   threads: int | None = None, providers: list[Any] | None = None,
                   require_tokenizer: bool = True) -> OnnxT5:
    """The export of `name_or_dir` (folder or hub id) in `onnx_path`, made there first if it is not there yet.

    An existing export is reused when it was made from the same source (and, for a local folder, the same weight
    files); otherwise it is re-exported (`require_tokenizer`: as `export`'s). `quantized`: as `OnnxT5.from_pretrained`'s
    (True or "int8", "int4"); the re-export keeps the quantized graphs the folder had. Another source's export in
    `onnx_path` is a ValueError.
    """
    for name, value, what in (("name_or_dir", name_or_dir, "a model folder or hub id"),
                              ("onnx_path", onnx_path, "the export folder's path")):
        if not isinstance(value, str | os.PathLike) or not str(value).strip():
            raise TypeError(f"load_or_export: {name} must be {what}, got {value!r}.")
    kind = quantized_kind(quantized, "load_or_export")
    onnx_path = Path(onnx_path).expanduser()
    had = {k for k in QUANTIZED if (onnx_path / quantized_name(ENCODER, k)).is_file()}
    meta = _read_meta(onnx_path)
    if meta is not None and FILES_KEY in meta:
        if meta.get("source") != source_id(name_or_dir):
            raise ValueError(f"load_or_export: {onnx_path} holds an export of {meta.get('source')}, not of "
                             f"{source_id(name_or_dir)}. Give another onnx_path, or remove that folder.")
        if meta.get("source_fingerprint") == source_fingerprint(name_or_dir) and (kind is None or kind in had):
            return OnnxT5.from_pretrained(onnx_path, quantized, threads, providers)
    # no export yet, or an outdated one: `export` replaces only a folder that is exactly an earlier export
    wanted = had | {kind} if kind else had
    export(str(name_or_dir), onnx_path, int8="int8" in wanted, int4="int4" in wanted,
           require_tokenizer=require_tokenizer)
    return OnnxT5.from_pretrained(onnx_path, quantized, threads, providers)
