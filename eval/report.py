"""The run folder: results.json, report.md, plots, predictions; and the environment the numbers were measured in.

    runs/eval/<name>/
        results.json                   every number below, schema at the end of this docstring
        report.md                      summary, quality, gate, speed, size and memory tables, plots, environment
        plots/quality_vs_latency.png   headline metric against latency, one point per variant
        plots/latency_vs_input_length.png   fixed-length latency against input tokens, one panel per batch x beams
        predictions/<variant>.txt      one prediction per line, test-set order (line breaks inside one become spaces)
        references.jsonl               {"source", "references"} per line: what every variant was scored against
        workers/<variant>.job.json, workers/<variant>.json   what each worker process was given and returned

results.json (schema_version 1; scores in points 0-100, times in seconds unless the key says ms, sizes in bytes,
memory in MiB):

    schema_version, name, created (ISO 8601, UTC), command, config_file
    config             the resolved EvalConfig (eval/config.py), defaults included
    environment        {date, cpu, cores, memory_gib, load_average [1, 5, 15 min at the start], platform, python,
                        threads, libraries {name: version}}
    dataset            {path, name, split, examples, max_references, task, task_prefix, source_column,
                        target_column, extra_references}
    generation         {num_beams, max_new_tokens, no_repeat_ngram_size, repetition_penalty, length_penalty,
                        early_stopping, batch_size}: identical for every variant
    reference          the variant others are compared with (significance, speed-up)
    headline_metrics   e.g. ["bleu"] (translation) or ["rouge2", "rougeL"] (summarization)
    sacrebleu_signatures  {bleu, chrf}: sacrebleu's signature strings
    speed_headline     {mode, batch_size, num_beams, input_length}: the cell in the summary and the quality plot
    variants           {name: {
        kind, path, quantized, hub, source, teacher
        quality        {bleu, chrf, rouge1, rouge2, rougeL, rougeLsum}
        significance   null for the reference; else {metric: {delta (variant - reference), p_value, significant,
                       mean, ci (95 % half-width)}}: paired bootstrap against the reference
        speed          [{mode ("fixed"|"natural"), batch_size, num_beams, input_length (null in natural mode),
                         new_tokens (fixed) | max_new_tokens, mean_input_length (natural), warmup_calls, timed_calls,
                         latency_ms {median, p90, mean, min, max} (per generate call), seconds (timed total),
                         generated_tokens, sequences, tokens_per_s, sequences_per_s, tokens_per_row (last pass),
                         speedup (reference median / this median, same cell; null if the reference lacks it)}]
        size_bytes     weights as stored (torch: *.safetensors; onnx: the three graphs loaded; torch-int8: bytes of
                       torch.save of the quantized state_dict); null for a hub model
        size_files     what size_bytes counts
        memory         {after_load_mb, after_speed_mb, peak_mb}: the worker's peak RSS (VmHWM) after each step
        load_seconds, quality_seconds (the whole quality pass), threads,
        engine         {library versions, threads, torch_imported (whether the worker process imported torch)}
        source_tokens  {mean, max} of the tokenized test inputs
        predictions    path of the predictions file, relative to the run folder}}
    gate               {passed, checks: [{variant, against, relation ("export"|"student"), metric, score,
                        against_score, drop, margin, passed}]}
"""

from __future__ import annotations

import json
import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distill.files import package_version
from distill.metrics import NAMES

LIBRARIES = ("torch", "transformers", "tokenizers", "onnxruntime", "numpy", "sacrebleu", "rouge-score", "datasets",
             "matplotlib")
PLOTS = {"quality": "plots/quality_vs_latency.png", "length": "plots/latency_vs_input_length.png"}


# ---- environment -----------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None


def environment(threads: int) -> dict[str, Any]:
    """Where and with what the run measured: read before the workers start (the load average says how busy)."""
    return {"date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": _cpu_model(), "cores": os.cpu_count(),
            "memory_gib": _memory_gib(), "load_average": [round(x, 2) for x in os.getloadavg()],
            "platform": platform.platform(), "python": platform.python_version(), "threads": threads,
            "libraries": {name: package_version(name) for name in LIBRARIES}}


# ---- tables ----------------------------------------------------------------------------------------------------------
def markdown_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A GitHub table; None shows as a dash, floats with two decimals."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def _mb(n: int | float | None) -> float | None:
    return None if n is None else n / 1e6


def _find(cells: list[dict[str, Any]], key: dict[str, Any]) -> dict[str, Any] | None:
    return next((c for c in cells if all(c.get(k) == v for k, v in key.items())), None)


def headline_cell(variants: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    """The speed cell the summary shows: natural mode at the smallest batch, else the smallest fixed cell."""
    cells = [c for v in variants.values() for c in v.get("speed", [])]
    if not cells:
        return None
    natural = [c for c in cells if c["mode"] == "natural"]
    pool = natural or cells
    best = min(pool, key=lambda c: (c["batch_size"], c["num_beams"], c["input_length"] or 0))
    return {k: best[k] for k in ("mode", "batch_size", "num_beams", "input_length")}


def _delta(significance: dict | None, metric: str) -> str:
    if not significance or metric not in significance:
        return "–"
    s = significance[metric]
    return f"{s['delta']:+.2f} (p {s['p_value']:.3f}){'*' if s['significant'] else ''}"


def summary_table(results: dict[str, Any]) -> str:
    """One row per variant: headline quality and its difference, headline latency, speed-up, size, memory, gate."""
    head, ref, key = results["headline_metrics"], results["reference"], results.get("speed_headline")
    failed = {c["variant"] for c in results["gate"]["checks"] if not c["passed"]}
    gated = {c["variant"] for c in results["gate"]["checks"]}
    rows = []
    for name, v in results["variants"].items():
        cell = _find(v["speed"], key) if key else None
        rows.append([name, v["kind"], *(v["quality"][m] for m in head),
                     *(_delta(v.get("significance"), m) for m in head),
                     cell["latency_ms"]["median"] if cell else None,
                     f"{cell['speedup']:.2f}x" if cell and cell.get("speedup") else None,
                     _mb(v.get("size_bytes")), v["memory"]["peak_mb"],
                     "fail" if name in failed else "pass" if name in gated else "–"])
    latency = "latency ms" if not key else (f"latency ms ({key['mode']}, batch {key['batch_size']}, "
                                            f"beams {key['num_beams']})")
    headers = ["variant", "kind", *(NAMES[m] for m in head), *(f"Δ {NAMES[m]} vs {ref}" for m in head), latency,
               f"speed-up vs {ref}", "size MB", "peak RSS MiB", "gate"]
    return markdown_table(headers, rows)


def _quality_table(results: dict[str, Any]) -> str:
    """Every metric; differences (with p-values) for the headline metrics and chrF; all of them are in results.json."""
    metrics, head = list(NAMES), results["headline_metrics"]
    tested = [*head, *(["chrf"] if "chrf" not in head else [])]
    rows = [[name, *(v["quality"].get(m) for m in metrics), *(_delta(v.get("significance"), m) for m in tested)]
            for name, v in results["variants"].items()]
    return markdown_table(["variant", *(NAMES[m] for m in metrics), *(f"Δ {NAMES[m]}" for m in tested)], rows)


def _gate_table(results: dict[str, Any]) -> str:
    rows = [[c["variant"], c["against"], c["relation"], NAMES[c["metric"]], c["score"], c["against_score"],
             c["drop"], c["margin"], "pass" if c["passed"] else "**FAIL**"] for c in results["gate"]["checks"]]
    return markdown_table(["variant", "against", "relation", "metric", "score", "against", "drop", "margin", "result"],
                          rows)


def _speed_table(results: dict[str, Any], mode: str) -> str:
    cells = sorted(((c, name) for name, v in results["variants"].items() for c in v["speed"] if c["mode"] == mode),
                   key=lambda cn: (cn[0]["batch_size"], cn[0]["num_beams"], cn[0]["input_length"] or 0))
    length = "input tokens" if mode == "fixed" else "mean input tokens"
    rows = [[name, c["batch_size"], c["num_beams"], c["input_length"] if mode == "fixed" else c["mean_input_length"],
             c["latency_ms"]["median"], c["latency_ms"]["p90"], c["tokens_per_s"], c["sequences_per_s"],
             f"{c['speedup']:.2f}x" if c.get("speedup") else None] for c, name in cells]
    return markdown_table(["variant", "batch", "beams", length, "median ms", "p90 ms", "tokens/s", "sequences/s",
                           "speed-up"], rows)


def _memory_table(results: dict[str, Any]) -> str:
    rows = [[name, v["kind"], _mb(v.get("size_bytes")), v["memory"]["after_load_mb"], v["memory"]["peak_mb"],
             v.get("load_seconds")] for name, v in results["variants"].items()]
    return markdown_table(["variant", "kind", "size MB", "RSS after load MiB", "peak RSS MiB", "load s"], rows)


# ---- plots -----------------------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # the object API renders with Agg and leaves pyplot's global state alone

    return Figure(figsize=(width, height), layout="constrained")


MARKERS = {"torch": "o", "torch-int8": "s", "onnx": "^"}


def plot_quality_vs_latency(results: dict[str, Any], path: Path) -> None:
    key, head = results.get("speed_headline"), results["headline_metrics"]
    fig = _figure(5.5 * len(head), 4.2)
    for ax, metric in zip(fig.subplots(1, len(head), squeeze=False)[0], head, strict=True):
        for name, v in results["variants"].items():
            cell = _find(v["speed"], key) if key else None
            if cell is None:
                continue
            x, y = cell["latency_ms"]["median"], v["quality"][metric]
            ax.scatter([x], [y], marker=MARKERS.get(v["kind"], "o"), s=60, label=name)
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
        where = f"{key['mode']}, batch {key['batch_size']}, beams {key['num_beams']}" if key else ""
        ax.set(xlabel=f"median latency per batch, ms ({where})", ylabel=NAMES[metric],
               title=f"{NAMES[metric]} against latency")
        ax.grid(alpha=0.3)
    fig.savefig(path, dpi=110)


def plot_latency_vs_length(results: dict[str, Any], path: Path) -> None:
    fixed = [(name, c) for name, v in results["variants"].items() for c in v["speed"] if c["mode"] == "fixed"]
    batches = sorted({c["batch_size"] for _, c in fixed}) or [None]
    beams = sorted({c["num_beams"] for _, c in fixed}) or [None]
    lengths = sorted({c["input_length"] for _, c in fixed})
    fig = _figure(max(5.5, 4.8 * len(beams)), 3.6 * len(batches) + 0.6)
    axes = fig.subplots(len(batches), len(beams), squeeze=False)
    for (i, batch), (j, beam) in ((ib, jb) for ib in enumerate(batches) for jb in enumerate(beams)):
        ax = axes[i][j]
        for name, v in results["variants"].items():
            points = sorted((c["input_length"], c["latency_ms"]["median"]) for c in v["speed"]
                            if c["mode"] == "fixed" and c["batch_size"] == batch and c["num_beams"] == beam)
            if points:
                ax.plot(*zip(*points, strict=True), marker=MARKERS.get(v["kind"], "o"), label=name)
        ax.set(xlabel="input tokens", ylabel="median latency per batch, ms", title=f"batch {batch}, beams {beam}")
        ax.set_xscale("log", base=2)  # lengths double from point to point; latency stays on a linear scale from 0
        ax.set_xticks(lengths, [str(n) for n in lengths])
        ax.minorticks_off()
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    if fixed:
        axes[0][0].legend(fontsize=7)
    new = fixed[0][1]["new_tokens"] if fixed else "?"
    fig.suptitle(f"Latency against input length, {new} new tokens per sequence\n(lower is faster; where do the "
                 "lines cross?)", fontsize=10)
    fig.savefig(path, dpi=110)


# ---- the run folder ------------------------------------------------------------------------------------------------
def render(results: dict[str, Any]) -> str:
    d, g, env = results["dataset"], results["generation"], results["environment"]
    key = results.get("speed_headline") or {}
    dataset_name = f" ({d['name']})" if d.get("name") else ""
    parts = [
        f"# Evaluation report: {results['name']}",
        f"{results['created']} · `{results['command']}`",
        f"Dataset `{d['path']}`{dataset_name}, split `{d['split']}`, "
        f"{d['examples']} examples, up to {d['max_references']} reference(s) each, task {d['task']}, prefix "
        f"`{d['task_prefix']}`. Generation for every variant: {g['num_beams']} beam(s), at most "
        f"{g['max_new_tokens']} new tokens, no_repeat_ngram_size {g['no_repeat_ngram_size']}, "
        f"{env['threads']} thread(s).",
        "## Summary",
        summary_table(results),
        f"Δ: variant minus `{results['reference']}`, paired bootstrap p-value; * significant at "
        f"alpha {results['config']['quality']['alpha']}. Latency: median per generate call in the "
        f"{key.get('mode', '?')} cell shown; speed-up: reference latency / variant latency in the same cell.",
        "## Quality",
        _quality_table(results),
        f"sacrebleu: `{results['sacrebleu_signatures'].get('bleu')}`, `{results['sacrebleu_signatures'].get('chrf')}`."
        " ROUGE: rouge-score F-measure with stemming, best reference per example.",
        "### Quality gate",
        ("passed" if results["gate"]["passed"] else "**FAILED**") + " (export: against the variant it was converted"
        " from; student: against its teacher; drop in points)",
        _gate_table(results) if results["gate"]["checks"] else "No variant names a source or a teacher.",
        "## Speed",
        "Fixed output length: inputs of exactly the given length, min_new_tokens = max_new_tokens, EOS suppressed: the "
        "same work for every variant.",
        _speed_table(results, "fixed"),
        "Natural length: batches of real test inputs decoded until EOS or max_new_tokens.",
        _speed_table(results, "natural"),
        "## Size and memory",
        _memory_table(results),
        "Peak RSS: the worker process's high-water mark (libraries, model, speed grid and quality pass).",
        "## Plots",
        f"![quality against latency]({PLOTS['quality']})",
        f"![latency against input length]({PLOTS['length']})",
        "## Environment",
        "\n".join([f"- date: {env['date']}", f"- CPU: {env['cpu']} ({env['cores']} cores, {env['memory_gib']} GiB)",
                   f"- threads: {env['threads']}; load average at the start: {env['load_average']}",
                   f"- {env['platform']}, Python {env['python']}",
                   "- " + ", ".join(f"{k} {v}" for k, v in env["libraries"].items() if v)]),
    ]
    return "\n\n".join(parts) + "\n"


def write_report(results: dict[str, Any], run_dir: Path, predictions: dict[str, list[str]] | None = None,
                 examples: tuple[list[str], list[list[str]]] | None = None) -> dict[str, Path]:
    """Write results.json, report.md, the plots and (when given) predictions and references into `run_dir`."""
    run_dir = Path(run_dir)
    (run_dir / "plots").mkdir(parents=True, exist_ok=True)
    written = {}
    for name, texts in (predictions or {}).items():
        path = run_dir / results["variants"][name]["predictions"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(t.replace("\n", " ") + "\n" for t in texts), encoding="utf-8")
    if examples is not None:
        written["references"] = run_dir / "references.jsonl"
        written["references"].write_text("".join(json.dumps({"source": s, "references": r}, ensure_ascii=False) + "\n"
                                                 for s, r in zip(*examples, strict=True)), encoding="utf-8")
    written["quality_plot"] = run_dir / PLOTS["quality"]
    plot_quality_vs_latency(results, written["quality_plot"])
    written["length_plot"] = run_dir / PLOTS["length"]
    plot_latency_vs_length(results, written["length_plot"])
    written["results"] = run_dir / "results.json"
    written["results"].write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    written["report"] = run_dir / "report.md"
    written["report"].write_text(render(results), encoding="utf-8")
    return written
