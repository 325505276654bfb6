"""The plots of report.md: headline quality against latency, and fixed-length latency against input length."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from distill.metrics import NAMES
from eval.tables import find_cell

MARKERS = {"torch": "o", "torch-int8": "s", "onnx": "^"}


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure  # the object API renders with Agg and leaves pyplot's global state alone

    return Figure(figsize=(width, height), layout="constrained")


def plot_quality_vs_latency(results: dict[str, Any], path: Path) -> None:
    """One panel per headline metric: each variant's score against its latency in the headline speed cell."""
    key, head = results.get("speed_headline"), results["headline_metrics"]
    fig = _figure(5.5 * len(head), 4.2)
    for ax, metric in zip(fig.subplots(1, len(head), squeeze=False)[0], head, strict=True):
        for name, v in results["variants"].items():
            cell = find_cell(v["speed"], key) if key else None
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
    """One panel per batch size x beams: each variant's median fixed-length latency against input tokens."""
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
