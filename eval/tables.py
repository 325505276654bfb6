"""The markdown tables of report.md (summary, quality, gate, speed, size and memory), built from results.json's dict.

`markdown_table` and `headline_cell` are also what the model card (publish/card.py) and `python -m bench` use.
"""

from __future__ import annotations

from typing import Any

from distill.metrics import NAMES


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


def find_cell(cells: list[dict[str, Any]], key: dict[str, Any]) -> dict[str, Any] | None:
    """The first speed cell whose fields match every item of `key` (e.g. `headline_cell`'s), else None."""
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
        cell = find_cell(v["speed"], key) if key else None
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


def quality_table(results: dict[str, Any]) -> str:
    """Every metric; differences (with p-values) for the headline metrics and chrF; all of them are in results.json."""
    metrics, head = list(NAMES), results["headline_metrics"]
    tested = [*head, *(["chrf"] if "chrf" not in head else [])]
    rows = [[name, *(v["quality"].get(m) for m in metrics), *(_delta(v.get("significance"), m) for m in tested)]
            for name, v in results["variants"].items()]
    return markdown_table(["variant", *(NAMES[m] for m in metrics), *(f"Δ {NAMES[m]}" for m in tested)], rows)


def gate_table(results: dict[str, Any]) -> str:
    """One row per gate check: the variant, what it is held against, the drop, the margin and the verdict."""
    rows = [[c["variant"], c["against"], c["relation"], NAMES.get(c["metric"], "identical predictions (%)"),
             c["score"], c["against_score"], c["drop"], c["margin"], "pass" if c["passed"] else "**FAIL**"]
            for c in results["gate"]["checks"]]
    return markdown_table(["variant", "against", "relation", "metric", "score", "against", "drop", "margin", "result"],
                          rows)


def speed_table(results: dict[str, Any], mode: str) -> str:
    """Every speed cell of `mode` ("fixed" or "natural"), ordered by batch, beams and input length."""
    cells = sorted(((c, name) for name, v in results["variants"].items() for c in v["speed"] if c["mode"] == mode),
                   key=lambda cn: (cn[0]["batch_size"], cn[0]["num_beams"], cn[0]["input_length"] or 0))
    length = "input tokens" if mode == "fixed" else "mean input tokens"
    rows = [[name, c["batch_size"], c["num_beams"], c["input_length"] if mode == "fixed" else c["mean_input_length"],
             c["latency_ms"]["median"], c["latency_ms"]["p90"], c["tokens_per_s"], c["sequences_per_s"],
             f"{c['speedup']:.2f}x" if c.get("speedup") else None] for c, name in cells]
    return markdown_table(["variant", "batch", "beams", length, "median ms", "p90 ms", "tokens/s", "sequences/s",
                           "speed-up"], rows)


def memory_table(results: dict[str, Any]) -> str:
    """One row per variant: size on disk, resident memory after loading and at its peak, load time."""
    rows = [[name, v["kind"], _mb(v.get("size_bytes")), v["memory"]["after_load_mb"], v["memory"]["peak_mb"],
             v.get("load_seconds")] for name, v in results["variants"].items()]
    return markdown_table(["variant", "kind", "size MB", "RSS after load MiB", "peak RSS MiB", "load s"], rows)
