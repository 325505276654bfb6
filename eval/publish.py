"""Stage a student for the Hugging Face hub, check that the staged folder works, and (with --push) upload it.

    python -m eval.publish --model runs/distill/student --onnx runs/export/student \
        --results runs/eval/default/results.json --repo-id you/t5-bible-en-fr-6-2 [--push] [--private]
    make publish REPO_ID=you/t5-bible-en-fr-6-2 [PUSH=1] [PRIVATE=1]

The staged folder (default runs/publish/<name>, printed) is what the hub repository will hold:

    config.json  generation_config.json  model.safetensors  tokenizer files    transformers loads the repo
    distill_meta.json                  how the student was made (teacher, layers copied, recipe, steps)
    onnx/encoder_model.onnx  onnx/decoder_model.onnx  onnx/decoder_with_past_model.onnx   fp32, optimum's names
    onnx/*_quantized.onnx              int8 (transformers.js picks these with `quantized: true`)
    onnx/config.json generation_config.json tokenizer.json export_meta.json   so `OnnxT5.from_pretrained(repo/onnx)`
    README.md                          the model card: huggingface_hub's ModelCard, numbers from results.json

Nothing is uploaded that does not work: the staged folder is loaded back with transformers and with `OnnxT5` and
generates on a test sentence (the ONNX fp32 greedy tokens must equal transformers'), the evaluation must hold the
student, and the repo id must be `namespace/name`. Without --push it is a dry run that lists what would be uploaded.
The token comes from HF_TOKEN or the cached login (huggingface_hub's own lookup); it is never printed or written.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from eval.quality import NAMES
from eval.report import headline_cell, markdown_table

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "spiece.model")
ONNX_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")
GRAPHS = ("encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx")


class PublishError(SystemExit):
    """A folder that must not be published, or a push that cannot happen; printed without a traceback."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m eval.publish", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("runs/distill/student"),
                        help="the student's save_pretrained folder (default %(default)s)")
    parser.add_argument("--onnx", type=Path, default=Path("runs/export/student"),
                        help="its export with --int8 (default %(default)s)")
    parser.add_argument("--results", type=Path, default=Path("runs/eval/default/results.json"),
                        help="the evaluation that measured it (default %(default)s)")
    parser.add_argument("--repo-id", required=True, help="namespace/name on the hub")
    parser.add_argument("--out", type=Path, help="staging folder (default runs/publish/<name>)")
    parser.add_argument("--license", default="apache-2.0", help="the card's license (default %(default)s)")
    parser.add_argument("--base-model", help="the teacher's hub id for the card's base_model (default: the teacher "
                        "recorded in distill_meta.json when it is a hub id; a local teacher is described in the body)")
    parser.add_argument("--push", action="store_true", help="upload; without it, a dry run")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    return parser.parse_args(argv)


# ---- what is published -------------------------------------------------------------------------------------------
def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    if not path.is_file():
        raise PublishError(f"publish: {path} does not exist ({what}). {fix}")
    return json.loads(path.read_text())


def _same_folder(a: str | Path, b: Path) -> bool:
    return Path(a).expanduser().resolve() == b.expanduser().resolve()


def find_variants(results: dict[str, Any], model: Path, onnx: Path) -> dict[str, tuple[str, dict] | None]:
    """The evaluation's variants for the student (torch), its ONNX fp32 and int8 exports and its teacher."""
    variants = results.get("variants", {})
    found: dict[str, tuple[str, dict] | None] = {"student": None, "onnx": None, "onnx-int8": None, "teacher": None}
    for name, v in variants.items():
        if v["kind"] == "torch" and _same_folder(v["path"], model):
            found["student"] = (name, v)
        elif v["kind"] == "onnx" and _same_folder(v["path"], onnx):
            found["onnx-int8" if v.get("quantized") else "onnx"] = (name, v)
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


def _is_hub_id(name: str | None) -> bool:
    """`t5-small` or `namespace/name` that is not a local path."""
    return bool(name) and not Path(name).expanduser().exists() and bool(re.fullmatch(r"[\w.-]+(/[\w.-]+)?", name))


def model_card(repo_id: str, meta: dict[str, Any], results: dict[str, Any], found: dict, license_: str,
               base_model: str | None):
    """The card: metadata (license, languages, datasets, base_model, tags, model-index) and a body with numbers."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    dataset = results["dataset"]
    task = dataset.get("task", "translation")
    split = dataset.get("split")
    dataset_name = _dataset_title(dataset)
    task_type = "translation" if task == "translation" else "summarization"
    metrics = ("bleu", "chrf") if task == "translation" else ("rouge1", "rouge2", "rougeL")
    eval_results = []
    for key, label in (("student", ""), ("onnx", " (ONNX fp32)"), ("onnx-int8", " (ONNX int8)")):
        if found[key] is None:
            continue
        quality = found[key][1]["quality"]
        eval_results += [EvalResult(task_type=task_type, dataset_type=dataset["path"], dataset_name=dataset_name,
                                    dataset_split=split, metric_type=m, metric_name=NAMES[m] + label,
                                    metric_value=round(float(quality[m]), 2))
                         for m in metrics if quality.get(m) is not None]
    hub_dataset = dataset["path"] if _is_hub_id(dataset["path"]) else None
    data = ModelCardData(
        license=license_, language=_languages(dataset) or None, library_name="transformers",
        datasets=[hub_dataset] if hub_dataset else None, base_model=base_model,
        tags=["t5", "distillation", "onnx", task_type, "shrink-and-fine-tune"],
        pipeline_tag="translation" if task == "translation" else "summarization",
        model_name=repo_id.split("/")[1], eval_results=eval_results)
    body = _card_body(repo_id, meta, results, found, base_model)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")


def _card_body(repo_id: str, meta: dict[str, Any], results: dict[str, Any], found: dict,
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
    for label in ("teacher", "student", "onnx", "onnx-int8"):
        if found[label] is None:
            continue
        name, v = found[label]
        cell = next((c for c in v["speed"] if all(c.get(k) == key[k] for k in key)), None) if key else None
        rows.append([name, v["kind"] + (" int8" if v.get("quantized") else ""), *(v["quality"].get(m) for m in shown),
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
    sample = "In the beginning God created the heavens and the earth."
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
batch = tokenizer(["{prefix}{sample}"], return_tensors="pt")
print(tokenizer.batch_decode(model.generate(**batch, num_beams=4, max_new_tokens=128), skip_special_tokens=True))
```

With the project's `OnnxT5` runtime (numpy + onnxruntime + tokenizers, no torch):

```python
from huggingface_hub import snapshot_download
from export import OnnxT5

model = OnnxT5.from_pretrained(snapshot_download("{repo_id}") + "/onnx", quantized=True)
tok = model.tokenizer
ids = [tok.encode("{prefix}{sample}").ids]
print(tok.decode_batch(model.generate(ids, max_new_tokens=128).tolist(), skip_special_tokens=True))
```
"""


def _copy(src: Path, dst: Path, names: tuple[str, ...], required: tuple[str, ...], what: str, fix: str) -> None:
    missing = [n for n in required if not (src / n).is_file()]
    if missing:
        raise PublishError(f"publish: {src} lacks {', '.join(missing)} ({what}). {fix}")
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
    """Write the hub folder to `out` (through a temporary sibling, renamed into place when complete)."""
    if not REPO_ID.match(repo_id):
        raise PublishError(f"publish: repo id {repo_id!r} is not `namespace/name` (letters, digits, '.', '_', '-'; "
                           "e.g. you/t5-small-6-2).")
    meta = _read_json(model / "distill_meta.json", "the student's provenance",
                      "Publish a student made by `make distill` or `python -m distill.student`.")
    export_meta = _read_json(onnx / "export_meta.json", "the ONNX export",
                             f"Export it first: make export MODEL={model} OUT={onnx}")
    results = _read_json(results_file, "the evaluation's results",
                         "Evaluate the student first: make eval (its config must list the student and its exports).")
    found = find_variants(results, model, onnx)
    if found["student"] is None:
        raise PublishError(f"publish: {results_file} holds no torch variant at {model}: the card's numbers must be "
                           f"the student's. Evaluate it (a config listing `path: {model}`) and try again.")
    quantized = [g.replace(".onnx", "_quantized.onnx") for g in GRAPHS]
    base_model = base_model or (meta.get("teacher") if _is_hub_id(meta.get("teacher")) else None)
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.tmp.", dir=out.parent) as tmp:
        staged = Path(tmp) / out.name
        _copy(model, staged, MODEL_FILES + TOKENIZER_FILES, (*MODEL_FILES, "tokenizer.json"), "the student",
              "It must be a save_pretrained folder with safetensors weights and a fast tokenizer.")
        _copy(onnx, staged / "onnx", GRAPHS + tuple(quantized) + ONNX_SIDE_FILES, GRAPHS + tuple(quantized),
              "fp32 and int8 graphs", f"Export with int8: make export MODEL={model} OUT={onnx}")
        (staged / "distill_meta.json").write_text(json.dumps(_public_meta(meta), indent=2) + "\n")
        export_meta = {k: v for k, v in export_meta.items() if k not in ("source", "source_fingerprint", "command")}
        (staged / "onnx" / "export_meta.json").write_text(json.dumps({"source": repo_id, **export_meta}, indent=2)
                                                         + "\n")
        model_card(repo_id, meta, results, found, license_, base_model).save(staged / "README.md")
        check_staged(staged, results.get("dataset", {}).get("task_prefix") or "")
        if out.exists():
            shutil.rmtree(out)
        os.rename(staged, out)
    return out


def check_staged(folder: Path, prefix: str) -> dict[str, list[int]]:
    """Load `folder` with transformers and with OnnxT5 (fp32, int8), generate greedily on one sentence; the ONNX fp32
    tokens must equal transformers'. Returns the tokens per runtime."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer, T5ForConditionalGeneration

    sentence = prefix + "In the beginning God created the heavens and the earth."
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = T5ForConditionalGeneration.from_pretrained(folder, use_safetensors=True).eval()
        batch = tokenizer([sentence], return_tensors="pt")
        with torch.inference_mode():
            want = model.generate(**batch, num_beams=1, do_sample=False, max_new_tokens=32).numpy()
        runtime = importlib.import_module("export.runtime")  # the served runtime itself, as eval.engines loads it
        got = {q: runtime.OnnxT5.from_pretrained(folder / "onnx", quantized=q).generate(
            batch["input_ids"].numpy(), batch["attention_mask"].numpy(), num_beams=1, do_sample=False,
            max_new_tokens=32) for q in (False, True)}
    # whatever stops a load or a generate here would stop the users of the repository too
    except Exception as error:  # noqa: BLE001
        raise PublishError(f"publish: the staged folder does not load and generate ({type(error).__name__}: "
                           f"{error}); nothing was published.") from None
    if got[False].shape != want.shape or not np.array_equal(got[False], want):
        raise PublishError("publish: the staged ONNX fp32 graphs generate other tokens than the PyTorch weights "
                           f"({got[False].tolist()} vs {want.tolist()}): they are not the same model. Re-export.")
    if got[True].shape[1] < 2:
        raise PublishError("publish: the staged int8 graphs generated nothing.")
    return {"transformers": want[0].tolist(), "onnx": got[False][0].tolist(), "onnx-int8": got[True][0].tolist()}


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload `folder` with huggingface_hub; the token is huggingface_hub's (HF_TOKEN or the cached login)."""
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import HfHubHTTPError

    if not get_token():
        raise PublishError("publish: no Hugging Face token. Set HF_TOKEN or run `hf auth login`, then retry.")
    api = HfApi()
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload student (eval.publish)")
    except HfHubHTTPError as error:
        status = getattr(error.response, "status_code", None)
        raise PublishError(f"publish: the hub refused the upload to {repo_id} (HTTP {status}); check that the "
                           "token may write to that namespace.") from None
    # the HTTP client's connection errors (httpx2's derive from neither OSError nor HfHubHTTPError)
    except Exception as error:  # noqa: BLE001
        raise PublishError(f"publish: cannot reach the hub ({type(error).__name__}: {error}); check the network "
                           "(and HF_ENDPOINT) and retry; the staged folder is kept.") from None
    return str(url)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    out = args.out or Path("runs/publish") / args.repo_id.split("/")[-1]
    folder = stage(args.model, args.onnx, args.results, args.repo_id, out, args.license, args.base_model)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    print(f"staged {folder} (loaded back with transformers and OnnxT5; ONNX fp32 tokens equal transformers'):")
    for p in files:
        print(f"  {p.relative_to(folder)}  {p.stat().st_size / 1e6:.2f} MB")
    if not args.push:
        print(f"dry run: nothing uploaded. To upload to {args.repo_id}: add --push (make publish ... PUSH=1).")
        return
    url = push(folder, args.repo_id, args.private)
    print(f"uploaded {len(files)} files to {url}")


if __name__ == "__main__":
    main()
