"""The evaluation harness: every variant's worker on the same examples, then results.json's dict.

Each variant runs in its own process (`python -m eval.worker`); here its outputs are put together: corpus metrics and
paired bootstrap against the reference variant (distill/metrics.py), speed-ups against the reference's cells, the
quality gate's checks (eval/quality.py). The run folder is written from the result by eval/report.py.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from distill.metrics import corpus_scores, paired_bootstrap, rouge_per_example
from eval.config import EvalConfig, Variant
from eval.data import Examples
from eval.environment import environment
from eval.errors import EvalError
from eval.quality import GateCheck, gate_checks
from eval.speed import cell_key
from eval.tables import headline_cell


def run_worker(variant: Variant, job: dict[str, Any], folder: Path, threads: int) -> dict[str, Any]:
    """Run `python -m eval.worker` for one variant; its progress and errors go to this process's stderr."""
    folder.mkdir(parents=True, exist_ok=True)
    job_file, out_file = folder / f"{variant.name}.job.json", folder / f"{variant.name}.json"
    job_file.write_text(json.dumps(job, ensure_ascii=False) + "\n", encoding="utf-8")
    out_file.unlink(missing_ok=True)
    # OpenMP pools size themselves from these at start-up; set for the child only, so every engine gets `threads`
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "eval.worker", str(job_file), str(out_file)], env=env, check=False)
    if done.returncode != 0 or not out_file.is_file():
        raise EvalError(f"variant {variant.name}: its worker exited with status {done.returncode} (its error is "
                        f"printed above). Rerun it alone with `{sys.executable} -m eval.worker {job_file} {out_file}`.")
    return json.loads(out_file.read_text(encoding="utf-8"))


def evaluate(config: EvalConfig, examples: Examples, run_dir: Path, command: str, config_file: str = "") \
        -> tuple[dict[str, Any], dict[str, list[str]], list[GateCheck]]:
    """Run every variant's worker; results.json's dict (schema: eval/report.py), the predictions, the gate checks."""
    threads = config.speed.threads or os.cpu_count() or 1
    env = environment(threads)  # before the workers: the load average then says how busy the machine was
    outputs = {}
    for v in config.variants:
        job = {"variant": dataclasses.asdict(v), "sources": examples.sources,
               "generation": dataclasses.asdict(config.generation), "speed": dataclasses.asdict(config.speed),
               "threads": threads, "max_source_length": config.dataset.max_source_length}
        kind = f", {v.quantized_kind}" if v.quantized_kind else ""
        print(f"eval: {v.name} ({v.kind}{kind}) from {v.path}", file=sys.stderr, flush=True)
        outputs[v.name] = run_worker(v, job, run_dir / "workers", threads)

    predictions = {name: out["predictions"] for name, out in outputs.items()}
    scores, signatures = {}, {}
    rouge = {name: rouge_per_example(texts, examples.references) for name, texts in predictions.items()}
    for name, texts in predictions.items():
        scores[name], signatures = corpus_scores(texts, examples.references, rouge[name])
    significance = paired_bootstrap(predictions, config.reference, examples.references,
                                    config.quality.bootstrap_samples, config.quality.alpha, rouge)
    reference_cells = {cell_key(c): c for c in outputs[config.reference]["speed"]}

    variants = {}
    for v in config.variants:
        out = outputs[v.name]
        speed = []
        for cell in out["speed"]:
            base = reference_cells.get(cell_key(cell))
            speedup = base["latency_ms"]["median"] / cell["latency_ms"]["median"] if base else None
            speed.append({**cell, "speedup": speedup})
        variants[v.name] = {
            "kind": v.kind, "path": v.path, "quantized": v.quantized, "hub": v.hub, "source": v.source,
            "teacher": v.teacher, "quality": scores[v.name], "significance": significance.get(v.name),
            "speed": speed, "size_bytes": out["size_bytes"], "size_files": out["size_files"],
            "memory": out["memory"], "load_seconds": out["load_seconds"], "quality_seconds": out["quality_seconds"],
            "threads": out["threads"], "engine": out["engine"], "source_tokens": out["source_tokens"],
            "predictions": f"predictions/{v.name}.txt"}
    # an assisted variant decodes its source's output: the share of predictions that are identical
    identical = {v.name: sum(a == b for a, b in zip(predictions[v.name], predictions[v.source], strict=True))
                 / max(1, len(predictions[v.name])) for v in config.variants
                 if v.kind == "onnx-assisted" and v.source is not None}
    for name, share in identical.items():
        variants[name]["identical_to_source"] = share
    checks = gate_checks(config, scores, identical)
    d = config.dataset
    results = {
        "schema_version": 1, "name": run_dir.name, "created": env["date"], "command": command,
        "config_file": config_file, "config": dataclasses.asdict(config), "environment": env,
        "dataset": {"path": d.path, "name": d.name, "split": d.split, "examples": len(examples),
                    "max_references": max(len(r) for r in examples.references), "task": d.task,
                    "task_prefix": d.task_prefix, "source_column": d.source_column, "target_column": d.target_column,
                    "extra_references": d.extra_references},
        "generation": dataclasses.asdict(config.generation), "reference": config.reference,
        "headline_metrics": list(config.headline()), "sacrebleu_signatures": signatures,
        "speed_headline": headline_cell(variants), "variants": variants,
        "gate": {"passed": all(c.passed for c in checks), "checks": [c.to_dict() for c in checks]},
    }
    return results, predictions, checks
