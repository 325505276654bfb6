"""The folder a hub repository will hold, staged from the student, its ONNX export and its evaluation.

    config.json  generation_config.json  model.safetensors  tokenizer files    transformers loads the repo
    distill_meta.json                  how the student was made (teacher, layers copied, recipe, steps)
    onnx/encoder_model.onnx  onnx/decoder_model.onnx  onnx/decoder_with_past_model.onnx   fp32, optimum's names
    onnx/*_quantized.onnx              int8 (transformers.js picks these with `quantized: true`)
    onnx/config.json generation_config.json tokenizer.json export_meta.json   so `OnnxT5.from_pretrained(repo/onnx)`
    README.md                          the model card (publish/card.py)

The folder is written in a temporary sibling, checked (publish/check.py) and only then put in place, whole.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from distill.files import replace_dir
from export.layout import GRAPHS, TOKENIZER_FILES, quantized_name
from publish.card import find_variants, is_hub_id, model_card
from publish.check import check_staged
from publish.errors import PublishError

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
ONNX_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise PublishError(f"{path} does not exist ({what}). {fix}")
    return json.loads(path.read_text())


def _copy(src: Path, dst: Path, names: tuple[str, ...], required: tuple[str, ...], what: str, fix: str) -> None:
    missing = [n for n in required if not (src / n).is_file()]
    if missing:
        raise PublishError(f"{src} lacks {', '.join(missing)} ({what}). {fix}")
    dst.mkdir(parents=True, exist_ok=True)
    for name in names:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _public_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """distill_meta.json without this machine's paths (the checkpoint the student came from)."""
    meta = json.loads(json.dumps(meta))
    meta.get("training", {}).pop("best_checkpoint", None)
    return meta


def stage(model: Path, onnx: Path, results_file: Path, repo_id: str, out: Path, license_: str = "apache-2.0",
          base_model: str | None = None) -> Path:
    """Write the hub folder to `out` (through a temporary sibling, moved into place when complete and checked)."""
    if not REPO_ID.match(repo_id):
        raise PublishError(f"repo id {repo_id!r} is not `namespace/name` (letters, digits, '.', '_', '-'; "
                           "e.g. you/t5-small-6-2).")
    meta = _read_json(model / "distill_meta.json", "the student's provenance",
                      "Publish a student made by `make distill` or `python -m distill.student`.")
    export_meta = _read_json(onnx / "export_meta.json", "the ONNX export",
                             f"Export it first: make export MODEL={model} OUT={onnx}")
    results = _read_json(results_file, "the evaluation's results",
                         "Evaluate the student first: make eval (its config must list the student and its exports).")
    found = find_variants(results, model, onnx)
    if found["student"] is None:
        raise PublishError(f"{results_file} holds no torch variant at {model}: the card's numbers must be the "
                           f"student's. Evaluate it (a config listing `path: {model}`) and try again.")
    quantized = tuple(quantized_name(g) for g in GRAPHS)
    base_model = base_model or (meta.get("teacher") if is_hub_id(meta.get("teacher")) else None)
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp.", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        _copy(model, staged, MODEL_FILES + TOKENIZER_FILES, (*MODEL_FILES, "tokenizer.json"), "the student",
              "It must be a save_pretrained folder with safetensors weights and a fast tokenizer.")
        _copy(onnx, staged / "onnx", GRAPHS + quantized + ONNX_SIDE_FILES, GRAPHS + quantized,
              "fp32 and int8 graphs", f"Export with int8: make export MODEL={model} OUT={onnx}")
        (staged / "distill_meta.json").write_text(json.dumps(_public_meta(meta), indent=2) + "\n")
        export_meta = {k: v for k, v in export_meta.items() if k not in ("source", "source_fingerprint", "command")}
        (staged / "onnx" / "export_meta.json").write_text(json.dumps({"source": repo_id, **export_meta}, indent=2)
                                                         + "\n")
        model_card(repo_id, meta, results, found, license_, base_model).save(staged / "README.md")
        check_staged(staged, results.get("dataset", {}).get("task_prefix") or "")
        replace_dir(staged, out)
    return out
