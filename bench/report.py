"""What the bench's measurements say: ratios and token agreement per cell, the goals, results.md and speedup.png."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from eval.tables import markdown_table


def agreement(got: list[list[int]], want: list[list[int]]) -> float:
    """Share of positions where the two outputs hold the same token (0 where shapes differ)."""
    a, b = np.asarray(got), np.asarray(want)
    return float(np.mean(a == b)) if a.shape == b.shape else 0.0


def summarize(results: dict[str, Any]) -> None:
    """Ratios per cell: against torch and against CTranslate2 int8 (median over median), and token agreement."""
    for model in results["models"].values():
        engines = model["engines"]
        for i, cell in enumerate(engines["torch"]["cells"]):
            base = cell["latency_ms"]["median"]
            ct2 = engines.get("ct2-int8", {}).get("cells", [None] * (i + 1))[i]
            for engine in engines.values():
                c = engine["cells"][i]
                c["vs_torch"] = base / c["latency_ms"]["median"]
                c["vs_ct2_int8"] = ct2["latency_ms"]["median"] / c["latency_ms"]["median"] if ct2 else None
                c["agreement_with_torch"] = agreement(c["tokens"], cell["tokens"])


def _cell(results: dict[str, Any], model: str, engine: str, batch: int, beams: int, length: int
          ) -> dict[str, Any] | None:
    engines = results["models"].get(model, {}).get("engines", {})
    cells = engines.get(engine, {}).get("cells", [])
    return next((c for c in cells if (c["batch_size"], c["num_beams"], c["input_length"]) == (batch, beams, length)),
                None)


def goals(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's goals, each with its measured ratio (None when a needed engine or model was not run)."""
    length = 64 if 64 in results["grid"]["input_lengths"] else results["grid"]["input_lengths"][0]
    rows = []

    def ratio(model_a: str, engine_a: str, model_b: str, engine_b: str, batch: int, beams: int) -> float | None:
        a, b = _cell(results, model_a, engine_a, batch, beams, length), _cell(results, model_b, engine_b, batch,
                                                                               beams, length)
        return None if a is None or b is None else b["latency_ms"]["median"] / a["latency_ms"]["median"]

    for what, value, target in (
            ("t5-small 6-2, batch 1 greedy: OnnxT5 int8 vs CTranslate2 int8",
             ratio("t5-small-6-2", "onnx-int8", "t5-small-6-2", "ct2-int8", 1, 1), 1.25),
            ("t5-small 6-2, batch 1 greedy: OnnxT5 int8 vs optimum int8",
             ratio("t5-small-6-2", "onnx-int8", "t5-small-6-2", "optimum-int8", 1, 1), 2.0),
            ("t5-small 6-2, batch 8 beam 4: OnnxT5 int8 vs CTranslate2 int8",
             ratio("t5-small-6-2", "onnx-int8", "t5-small-6-2", "ct2-int8", 8, 4), 1.0),
            ("batch 1 greedy: torch teacher 6-6 -> OnnxT5 int8 student 6-2",
             ratio("t5-small-6-2", "onnx-int8", "t5-small-6-6", "torch", 1, 1), 8.0),
            ("default student, batch 1 greedy: OnnxT5 int8 vs CTranslate2 int8",
             ratio("student", "onnx-int8", "student", "ct2-int8", 1, 1), None)):
        rows.append({"goal": what, "input_length": length, "ratio": value, "target": target,
                     "met": None if value is None or target is None else value >= target})
    slower = [(m, e, c["batch_size"], c["num_beams"], c["input_length"], c["vs_torch"])
              for m, model in results["models"].items() for e, engine in model["engines"].items()
              if e.startswith("onnx") for c in engine["cells"] if c["vs_torch"] < 1.0]
    rows.append({"goal": "no cell where OnnxT5 is slower than torch on the same model", "ratio": len(slower),
                 "target": 0, "met": not slower, "cells": slower})
    small = results["models"].get("t5-small-6-2", {}).get("engines", {}).get("onnx-int8")
    teacher = results["models"].get("t5-small-6-6", {}).get("engines", {}).get("torch")
    if small and teacher:
        mem = small["memory"]["peak_mb"] / teacher["memory"]["peak_mb"]
        rows.append({"goal": "peak RSS: OnnxT5 int8 student 6-2 / torch teacher 6-6", "ratio": mem, "target": 0.35,
                     "met": mem <= 0.35, "lower_is_better": True})
    venv = results.get("venvs", {}).get("serve_venv")
    if venv:
        mb = venv["bytes"] / 1e6
        rows.append({"goal": "venv holding only what OnnxT5 needs, MB", "ratio": mb, "target": 200, "met": mb <= 200,
                     "lower_is_better": True})
    return rows


def render(results: dict[str, Any]) -> str:
    """results.md: the goals, then per model the latency table (ratios, agreement) and the memory table."""
    lines = [f"# make bench, {results['created']}", "",
             f"{results['environment']['cpu']}, {results['threads']} threads; {results['new_tokens']} new tokens "
             "forced (min = max); median of the timed calls; ratios = other latency / this latency (> 1: faster).",
             ""]
    lines += ["## Goals", "", markdown_table(
        ["goal", "input tokens", "measured", "target", "met"],
        [[g["goal"], g.get("input_length"), g["ratio"], g["target"],
          None if g["met"] is None else ("yes" if g["met"] else "**no**")] for g in results["goals"]]), ""]
    for model, data in results["models"].items():
        lines += [f"## {model} ({data['path']})", ""]
        rows = []
        for engine, e in data["engines"].items():
            for c in e["cells"]:
                rows.append([c["batch_size"], "greedy" if c["num_beams"] == 1 else f"beam {c['num_beams']}",
                             c["input_length"], engine, c["latency_ms"]["median"], c["tokens_per_s"],
                             f"{c['vs_torch']:.2f}x", None if c["vs_ct2_int8"] is None else f"{c['vs_ct2_int8']:.2f}x",
                             c["agreement_with_torch"]])
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        lines += [markdown_table(["batch", "decoding", "input", "engine", "median ms", "tokens/s", "vs torch",
                                  "vs ct2 int8", "same tokens as torch"], rows), ""]
        mem = [[engine, e["memory"]["after_load_mb"], e["memory"]["peak_mb"], e["load_seconds"]]
               for engine, e in data["engines"].items()]
        lines += [markdown_table(["engine", "RSS after load MiB", "peak RSS MiB", "load s"], mem), ""]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    """speedup.png: every engine's speed-up against torch generate, cell by cell, one panel per model."""
    from matplotlib.figure import Figure

    models = list(results["models"])
    fig = Figure(figsize=(6 * len(models), 4.5), layout="constrained")
    axes = fig.subplots(1, len(models), squeeze=False)[0]
    for ax, model in zip(axes, models, strict=True):
        engines = results["models"][model]["engines"]
        labels = [f"b{c['batch_size']} {'g' if c['num_beams'] == 1 else 'b' + str(c['num_beams'])} "
                  f"{c['input_length']}" for c in engines["torch"]["cells"]]
        width = 0.8 / len(engines)
        for k, (engine, e) in enumerate(engines.items()):
            ax.bar(np.arange(len(labels)) + k * width, [c["vs_torch"] for c in e["cells"]], width, label=engine)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=60, fontsize=7)
        ax.set_ylabel("speed-up vs torch generate")
        ax.set_title(model)
        ax.legend(fontsize=7)
    fig.savefig(path, dpi=110)
