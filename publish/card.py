"""The model card of a published student: huggingface_hub's ModelCard, its numbers read from the evaluation.

The metadata (license, languages, datasets, base_model, tags, model-index) lets the hub list the model; the body says
how the student was made (teacher, layers copied, recipe, training), shows the evaluation's quality and speed table
for the student, its exports and its teacher, and how to run it with transformers and with `OnnxT5`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from distill.metrics import NAMES
from eval.tables import headline_cell, markdown_table

# the evaluation's variant for each role ("student", "onnx", "onnx-int8", "onnx-int4", "teacher"): (its name, its
# results entry)
Found = dict[str, tuple[str, dict[str, Any]] | None]
SAMPLE = "In the beginning God created the heavens and the earth."  # what the usage examples and the check generate on


def _same_folder(a: str | Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == b.expanduser().resolve()


def _precision(v: dict[str, Any]) -> str:
    """A variant's precision as a suffix, " int8", " int4" or "" (fp32), from results.json's `quantized` (false, true
    or "int8", "int4")."""
    quantized = v.get("quantized")
    return "" if not quantized else " int4" if quantized == "int4" else " int8"


def find_variants(results: dict[str, Any], model: Path, onnx: Path) -> Found:
    """The evaluation's variants for the student (torch), its ONNX fp32, int8 and int4 exports and its teacher."""
    variants = results.get("variants", {})
    found: Found = {"student": None, "onnx": None, "onnx-int8": None, "onnx-int4": None, "teacher": None}
    for name, v in variants.items():
        if v["kind"] == "torch" and _same_folder(v["path"], model):
            found["student"] = (name, v)
        elif v["kind"] == "onnx" and _same_folder(v["path"], onnx):
            found["onnx" + _precision(v).replace(" ", "-")] = (name, v)
    if found["student"] and found["student"][1].get("teacher") in variants:
        teacher = found["student"][1]["teacher"]
        found["teacher"] = (teacher, variants[teacher])
    return found


def _languages(dataset: dict[str, Any]) -> list[str]:
    """ISO codes read from the column names (en, fr, translation.ro -> ro); none for other names."""
    codes = []
    for column in (dataset.get("source_column"), dataset.get("target_column")):
        code = (column or "").split(".")[-1].split("_")[0]
        if re.fullmatch(r"[a-z]{2,3}", code) and code not in codes:
            codes.append(code)
    return codes


def _dataset_title(dataset: dict[str, Any]) -> str:
    """A hub id (with its config name), or for a local folder the pair its manifest.json describes."""
    manifest = Path(dataset["path"]) / "manifest.json"
    if manifest.is_file():
        pair = json.loads(manifest.read_text()).get("pair", {})
        source, target = pair.get(dataset.get("source_column")), pair.get(dataset.get("target_column"))
        if source and target:
            return f"{source} -> {target}"
    return f"{dataset['path']} ({dataset['name']})" if dataset.get("name") else dataset["path"]


def is_hub_id(name: str | None) -> bool:
    """`t5-small` or `namespace/name` that is not a local path."""
    return bool(name) and not Path(name).expanduser().exists() and bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name))


def model_card(repo_id: str, meta: dict[str, Any], results: dict[str, Any], found: Found, license_: str,
               base_model: str | None) -> ModelCard:
    """The card: metadata (license, languages, datasets, base_model, tags, model-index) and a body with numbers."""
    dataset = results["dataset"]
    task = dataset.get("task", "translation")
    split = dataset.get("split")
    dataset_name = _dataset_title(dataset)
    task_type = "translation" if task == "translation" else "summarization"
    metrics = ("bleu", "chrf") if task == "translation" else ("rouge1", "rouge2", "rougeL")
    eval_results = []
    for key, label in (("student", ""), ("onnx", " (ONNX fp32)"), ("onnx-int8", " (ONNX int8)"),
                       ("onnx-int4", " (ONNX int4)")):
        if found[key] is None:
            continue
        quality = found[key][1]["quality"]
        eval_results += [EvalResult(task_type=task_type, dataset_type=dataset["path"], dataset_name=dataset_name,
                                    dataset_split=split, metric_type=m, metric_name=NAMES[m] + label,
                                    metric_value=round(float(quality[m]), 2))
                         for m in metrics if quality.get(m) is not None]
    hub_dataset = dataset["path"] if is_hub_id(dataset["path"]) else None
    data = ModelCardData(
        license=license_, language=_languages(dataset) or None, library_name="transformers",
        datasets=[hub_dataset] if hub_dataset else None, base_model=base_model,
        tags=["t5", "distillation", "onnx", task_type, "shrink-and-fine-tune"],
        pipeline_tag="translation" if task == "translation" else "summarization",
        model_name=repo_id.split("/")[1], eval_results=eval_results)
    body = _card_body(repo_id, meta, results, found, base_model)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _card_body(repo_id: str, meta: dict[str, Any], results: dict[str, Any], found: Found,
               base_model: str | None) -> str:
    dataset, gen = results["dataset"], results["generation"]
    head = results["headline_metrics"]
    shown = [m for m in ("bleu", "chrf", "rouge2", "rougeL") if m in head or (m == "chrf" and "bleu" in head)]
    layers, recipe, training = meta["layers_copied"], meta.get("recipe", {}), meta.get("training", {})
    teacher = base_model or meta.get("teacher")
    if recipe.get("alpha_ce", 0) > 0 or recipe.get("alpha_hid", 0) > 0:
        how = (f"knowledge distillation (cross-entropy weight {recipe.get('alpha_mlm')}, KL weight "
               f"{recipe.get('alpha_ce')} at temperature {recipe.get('temperature')}, hidden-state weight "
               f"{recipe.get('alpha_hid')})")
    else:
        how = "shrink and fine-tune (cross-entropy on the training targets)"
    frozen = [part for part, key in (("the encoder", "freeze_encoder"), ("the embeddings", "freeze_embeddings"))
              if recipe.get(key)]
    key = results.get("speed_headline") or headline_cell(results["variants"])
    rows = []
    for label in ("teacher", "student", "onnx", "onnx-int8", "onnx-int4"):
        if found[label] is None:
            continue
        name, v = found[label]
        cell = next((c for c in v["speed"] if all(c.get(k) == key[k] for k in key)), None) if key else None
        rows.append([name, v["kind"] + _precision(v), *(v["quality"].get(m) for m in shown),
                     cell["latency_ms"]["median"] if cell else None,
                     f"{cell['speedup']:.2f}x" if cell and cell.get("speedup") else None,
                     None if v.get("size_bytes") is None else v["size_bytes"] / 1e6, v["memory"]["peak_mb"]])
    latency = (f"latency ms ({key['mode']} length, batch {key['batch_size']}, beams {key['num_beams']})" if key
               else "latency ms")
    table = markdown_table(["variant", "runs on", *(NAMES[m] for m in shown), latency,
                            f"speed-up vs {results['reference']}", "size MB", "peak RSS MiB"], rows)
    env = results["environment"]
    signature = results.get("sacrebleu_signatures", {}).get("bleu", "-")
    prefix = dataset.get("task_prefix") or ""
    return f"""
# {repo_id.split("/")[1]}

A T5 student with {meta["student_layers"]["encoder"]} encoder and {meta["student_layers"]["decoder"]} decoder layers,
distilled from a {meta["teacher_layers"]["encoder"]}-{meta["teacher_layers"]["decoder"]} layer teacher
(`{teacher}`), with PyTorch weights for transformers and ONNX graphs with a key/value cache (fp32 and int8) for
onnxruntime, optimum and transformers.js.

## How it was made
- **Teacher**: `{teacher}`.
- **Layers copied** (maximally spaced, Shleifer's shrink and fine-tune): encoder {layers["encoder"]},
  decoder {layers["decoder"]}.
- **Recipe**: {how}{"; " + " and ".join(frozen) + " frozen" if frozen else ""}.
- **Training**: {training.get("global_step", "?")} optimizer steps; best validation {training.get("monitor", "score")}
  {training.get("best_score", float("nan")):.2f}; command `{training.get("command", "?")}`.
- **Data**: {_dataset_title(dataset)} (`{dataset["path"]}`, columns {dataset.get("source_column")} ->
  {dataset.get("target_column")}), task prefix `{prefix}`.

## Quality and speed
Measured by the project's evaluation harness on the `{dataset.get("split")}` split: {dataset.get("examples")}
examples, {dataset.get("max_references", 1)} reference(s) per example (sacrebleu `{signature}`), {gen["num_beams"]}
beam(s), up to {gen["max_new_tokens"]} new tokens; {env.get("cpu")}, {env.get("threads")} thread(s),
{env.get("date")}.

{table}

## Usage
With transformers:

```python
from transformers import AutoTokenizer, T5ForConditionalGeneration

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = T5ForConditionalGeneration.from_pretrained("{repo_id}")
batch = tokenizer(["{prefix}{SAMPLE}"], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**batch, num_beams=4, max_new_tokens=128), skip_special_tokens=True))
```

With the project's `OnnxT5` runtime (numpy + onnxruntime + tokenizers, no torch):

```python
from huggingface_hub import snapshot_download
from export import OnnxT5

model = OnnxT5.from_pretrained(snapshot_download("{repo_id}") + "/onnx", quantized=True)
tok = model.tokenizer
ids = [tok.encode("{prefix}{SAMPLE}").ids]
print(tok.decode_batch(model.generate(ids, max_new_tokens=128).tolist(), skip_special_tokens=True))
```
"""
