"""The run folder built from a synthetic results dict: tables in report.md, PNG plots, results.json round trip."""

from __future__ import annotations

import json

from eval.report import write_report
from eval.tables import summary_table

PNG = b"\x89PNG\r\n\x1a\n"


def test_report_renders_the_tables_and_writes_the_plots(tmp_path, synthetic_results):
    predictions = {name: [f"{name} {i}\nsecond line" for i in range(3)] for name in synthetic_results["variants"]}
    examples = (["s1", "s2", "s3"], [["r1"], ["r2", "r2b"], ["r3"]])
    written = write_report(synthetic_results, tmp_path, predictions, examples)

    assert json.loads(written["results"].read_text()) == synthetic_results
    for plot in ("quality_plot", "length_plot"):
        data = written[plot].read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000, plot
    report = written["report"].read_text()
    for heading in ("## Summary", "## Quality", "### Quality gate", "## Speed", "## Size and memory", "## Plots",
                    "## Environment"):
        assert heading in report
    assert "![quality against latency](plots/quality_vs_latency.png)" in report
    assert "| student-onnx | onnx | 27.00 | -3.00 (p 0.001)* |" in report  # summary: BLEU, its Δ with p-value
    assert "| student-onnx | student-torch | export | BLEU | 27.00 | 28.00 | 1.00 | 0.50 | **FAIL** |" in report
    assert "| student-onnx | 4 | 1 | 64 | 40.00 | 44.00 |" in report  # fixed cell: batch 4, input 64
    assert "4.00x" in report and "CPU:" in report
    lines = (tmp_path / "predictions" / "student-torch.txt").read_text().splitlines()
    assert lines == [f"student-torch {i} second line" for i in range(3)]
    refs = [json.loads(line) for line in (tmp_path / "references.jsonl").read_text().splitlines()]
    assert refs[1] == {"source": "s2", "references": ["r2", "r2b"]}


def test_summary_table_has_one_row_per_variant_with_speedup_and_gate(synthetic_results):
    table = summary_table(synthetic_results).splitlines()
    assert table[0].startswith("| variant | kind | BLEU | Δ BLEU vs teacher-torch | "
                               "latency ms (natural, batch 1, beams 1) |")
    rows = {line.split(" | ")[0].strip("| "): line for line in table[2:]}
    assert list(rows) == ["teacher-torch", "student-torch", "student-onnx"]
    assert rows["teacher-torch"].endswith("| 40.00 | 1.00x | 28.00 | 350.00 | – |")
    assert rows["student-torch"].endswith("| 20.00 | 2.00x | 14.00 | 175.00 | pass |")
    assert rows["student-onnx"].endswith("| 10.00 | 4.00x | 7.00 | 87.50 | fail |")
