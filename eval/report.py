"""The run folder: results.json, report.md (eval/tables.py, eval/plots.py), plots, predictions and references.

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
        kind, path, quantized (false, true: int8, or "int4"), hub, source, teacher
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
from pathlib import Path
from typing import Any

from distill.files import write_text_whole
from eval.errors import EvalError
from eval.plots import plot_latency_vs_length, plot_quality_vs_latency
from eval.tables import gate_table, memory_table, quality_table, speed_table, summary_table

PLOTS = {"quality": "plots/quality_vs_latency.png", "length": "plots/latency_vs_input_length.png"}
RUN_ENTRIES = {"results.json": "file", "report.md": "file", "references.jsonl": "file", "plots": "folder",
               "predictions": "folder", "workers": "folder"}  # all a run folder holds at its top level


def check_run_dir(run_dir: Path) -> None:
    """EvalError, before any work, when `run_dir` may not be written: it is a file, or a folder holding anything but
    an earlier run's files (a model, an export, a user's files, whose report.md or results.json would be replaced).
    A new or empty folder, or an earlier run, is fine: that run's files are replaced."""
    run_dir = Path(run_dir).expanduser()
    fix = "Choose another run folder (--out), or move that one away first."
    if run_dir.exists() and not run_dir.is_dir():
        raise EvalError(f"--out {run_dir} is a file, not a folder; it is left as it is. {fix}")
    if not run_dir.is_dir():
        return
    odd = sorted(p.name + ("/" if p.is_dir() else "") for p in run_dir.iterdir()
                 if p.is_symlink() or RUN_ENTRIES.get(p.name.removeprefix(".").removesuffix(".tmp"))
                 != ("folder" if p.is_dir() else "file"))
    if odd:
        shown = ", ".join(odd[:5]) + (f" and {len(odd) - 5} more" if len(odd) > 5 else "")
        raise EvalError(f"--out {run_dir} is not an earlier evaluation run: it holds {shown}, which `python -m eval` "
                        f"does not write; it is left as it is. {fix}")
    results = run_dir / "results.json"
    if (run_dir / "report.md").exists() or results.exists():  # a run's report.md comes with its results.json
        try:
            earlier = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError):
            earlier = None
        if not isinstance(earlier, dict) or "schema_version" not in earlier:
            raise EvalError(f"--out {run_dir} is not an earlier evaluation run: its report.md or results.json was not "
                            f"written by `python -m eval` (no results.json with a schema_version); it is left as it "
                            f"is. {fix}")


def render(results: dict[str, Any]) -> str:
    """report.md: the run, the summary, then quality, gate, speed, size and memory, plots and environment."""
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
        quality_table(results),
        f"sacrebleu: `{results['sacrebleu_signatures'].get('bleu')}`, `{results['sacrebleu_signatures'].get('chrf')}`."
        " ROUGE: rouge-score F-measure with stemming, best reference per example.",
        "### Quality gate",
        ("passed" if results["gate"]["passed"] else "**FAILED**") + " (export: against the variant it was converted"
        " from; student: against its teacher; drop in points)",
        gate_table(results) if results["gate"]["checks"] else "No variant names a source or a teacher.",
        "## Speed",
        "Fixed output length: inputs of exactly the given length, min_new_tokens = max_new_tokens, EOS suppressed: the "
        "same work for every variant.",
        speed_table(results, "fixed"),
        "Natural length: batches of real test inputs decoded until EOS or max_new_tokens.",
        speed_table(results, "natural"),
        "## Size and memory",
        memory_table(results),
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
        write_text_whole(path, "".join(t.replace("\n", " ") + "\n" for t in texts))
    if examples is not None:
        written["references"] = run_dir / "references.jsonl"
        lines = (json.dumps({"source": s, "references": r}, ensure_ascii=False) + "\n"
                 for s, r in zip(*examples, strict=True))
        write_text_whole(written["references"], "".join(lines))
    written["quality_plot"] = run_dir / PLOTS["quality"]
    plot_quality_vs_latency(results, written["quality_plot"])
    written["length_plot"] = run_dir / PLOTS["length"]
    plot_latency_vs_length(results, written["length_plot"])
    written["results"] = run_dir / "results.json"
    write_text_whole(written["results"], json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    written["report"] = run_dir / "report.md"
    write_text_whole(written["report"], render(results))
    return written
