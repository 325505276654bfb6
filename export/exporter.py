"""Export a T5-family model to ONNX as three graphs with a key/value cache, checked against PyTorch before it is kept.

    python -m export --model models/teacher --out runs/export/teacher             # fp32
    python -m export --model runs/distill/student --out runs/export/student --int8 --int8-keep-fp32 lm_head,wo

The folder follows optimum's layout and input/output names (so `ORTModelForSeq2SeqLM` and transformers.js load it):

    encoder_model.onnx, decoder_model.onnx, decoder_with_past_model.onnx   the graphs (`export.graphs`)
    *_quantized.onnx               with --int8: dynamic int8 MatMuls and embeddings (`export.quantize`)
    config.json generation_config.json tokenizer files    what `OnnxT5` and transformers read
    export_meta.json               opset, versions, max |diff| against PyTorch per graph and output, sizes,
                                   int8 token agreement

Everything is written to a hidden folder next to `--out` and renamed into place only after onnxruntime matched PyTorch
on a padded batch (first decoder step with several tokens, then several steps with past), so a crash or a failed check
never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distill.errors import ModelError
from distill.files import replace_dir
from distill.models import load_t5, load_tokenizer
from export.errors import ExportError
from export.layout import ENCODER, META_FILE, TOKENIZER_FILES, quantized_name, source_fingerprint, source_id
from export.quantize import INT8_OPS, int8_agreement, quantize
from export.runtime import OnnxT5
from export.trace import DEFAULT_OPSET, export_graphs
from export.validate import Validation, validate


def _copy_tokenizer(name_or_dir: str, staged: Path) -> list[str]:
    local = Path(name_or_dir).expanduser()
    if local.is_dir():
        copied = [name for name in TOKENIZER_FILES if (local / name).is_file()]
        for name in copied:
            shutil.copy2(local / name, staged / name)
        return copied
    try:  # a hub id: the same loader as everywhere else; a repo without a tokenizer is allowed
        load_tokenizer(name_or_dir).save_pretrained(staged)
    except ModelError:
        return []
    return sorted(p.name for p in staged.iterdir() if p.name in TOKENIZER_FILES)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def _meta(model: Any, model_name_or_dir: str, staged: Path, opset: int, check: Validation,
          diffs: dict[str, dict[str, float]], int8_meta: dict[str, Any] | None, tokenizer_files: list[str],
          command: str | None) -> dict[str, Any]:
    """What export_meta.json records: the source, how the graphs were made, how they compared, what the folder holds."""
    cfg = model.config
    return {
        "source": source_id(model_name_or_dir),
        "source_fingerprint": source_fingerprint(model_name_or_dir),
        "command": command,
        "opset": opset,
        "exporter": "torch.onnx.export(dynamo=False)",
        "versions": _versions(),
        "model": {k: getattr(cfg, k, None) for k in (
            "model_type", "num_layers", "num_decoder_layers", "d_model", "d_ff", "d_kv", "num_heads", "vocab_size",
            "feed_forward_proj", "tie_word_embeddings", "scale_decoder_outputs")}
        # transformers 5.x keeps tie_word_embeddings True for v1.1-style models; this says what the weights are
        | {"lm_head_is_shared_embedding": model.lm_head.weight is model.shared.weight},
        "validation": {"batch": len(check.enc_lengths), "encoder_lengths": list(check.enc_lengths),
                       "first_decoder_length": check.first_decoder_length, "past_steps": check.past_steps,
                       "atol_logits": check.atol, "max_abs_diff": diffs},
        "int8": int8_meta,
        "tokenizer_files": tokenizer_files,
        "file_bytes": {p.name: p.stat().st_size for p in sorted(staged.iterdir()) if p.suffix == ".onnx"},
    }


def export(model_name_or_dir: str, out: Path | str, opset: int = DEFAULT_OPSET, int8: bool = False,
           int8_keep_fp32: tuple[str, ...] = (), check: Validation | None = None, command: str | None = None) -> Path:
    """Export, validate and (optionally) quantize `model_name_or_dir` into `out`; returns `out`.

    `command` is recorded in export_meta.json (the CLI passes its own command line). An existing `out` is replaced
    only when it is an earlier export (it holds export_meta.json).
    """
    out = Path(out).expanduser().resolve()
    check = check or Validation()
    if out.exists() and not (out / META_FILE).is_file():
        raise ExportError(f"{out} exists and is not an earlier export (no {META_FILE}); it is left alone. "
                          "Choose a new folder for --out, or remove this one.")
    model = load_t5(model_name_or_dir).float().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp.", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        staged.mkdir()
        specs = export_graphs(model, staged, opset)
        diffs = validate(model, staged, specs, check)
        model.config.save_pretrained(staged)
        model.generation_config.save_pretrained(staged)
        tokenizer_files = _copy_tokenizer(model_name_or_dir, staged)
        int8_meta = None
        if int8:
            excluded = quantize(staged, tuple(int8_keep_fp32))
            int8_meta = {"op_types_to_quantize": list(INT8_OPS), "weight_type": "QInt8",
                         "keep_fp32": list(int8_keep_fp32), "excluded_nodes": excluded,
                         **int8_agreement(staged, check, model.config)}
        meta = _meta(model, model_name_or_dir, staged, opset, check, diffs, int8_meta, tokenizer_files, command)
        (staged / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        replace_dir(staged, out)
    return out


def load_or_export(name_or_dir: str | Path, onnx_path: str | Path, quantized: bool = False,
                   threads: int | None = None, providers: list[Any] | None = None) -> OnnxT5:
    """The export of `name_or_dir` (folder or hub id) in `onnx_path`, made there first if it is not there yet.

    An existing export is reused when it was made from the same source (and, for a local folder, the same weight
    files); otherwise it is re-exported. Another source's export in `onnx_path` is a ValueError.
    """
    onnx_path = Path(onnx_path).expanduser()
    meta_file = onnx_path / META_FILE
    need_int8 = quantized and not (onnx_path / quantized_name(ENCODER)).is_file()
    if meta_file.is_file():
        meta = json.loads(meta_file.read_text())
        if meta.get("source") != source_id(name_or_dir):
            raise ValueError(f"load_or_export: {onnx_path} holds an export of {meta.get('source')}, not of "
                             f"{source_id(name_or_dir)}. Give another onnx_path, or remove that folder.")
        if meta.get("source_fingerprint") == source_fingerprint(name_or_dir) and not need_int8:
            return OnnxT5.from_pretrained(onnx_path, quantized, threads, providers)
    export(str(name_or_dir), onnx_path, int8=quantized or (onnx_path / quantized_name(ENCODER)).is_file())
    return OnnxT5.from_pretrained(onnx_path, quantized, threads, providers)
