"""`python -m eval` as a user runs it: the gate decides the exit, and a whole run on tiny models writes the report."""

from __future__ import annotations

import json

import pytest
import yaml

import eval.__main__ as cli
from eval.errors import GateFailed
from eval.quality import gate_checks


def _write_config(path, dataset_dir, variants, **sections) -> str:
    data = {"reference": "teacher-torch", "dataset": {"path": str(dataset_dir), "limit": 6}, "variants": variants,
            **sections}
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize("onnx_margin, fails", [(None, True), (2.0, False)])
def test_the_quality_gate_decides_the_exit(tmp_path, monkeypatch, capsys, dataset_dir, synthetic_results, onnx_margin,
                                            fails):
    """synthetic_results: teacher 30 BLEU, student 28 (-2, margin 5), student-onnx 27 (-1 against the student)."""
    for name in ("teacher", "student"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
    (tmp_path / "onnx").mkdir()
    (tmp_path / "onnx" / "export_meta.json").write_text(json.dumps({"int8": None}))
    onnx = {"name": "student-onnx", "kind": "onnx", "path": str(tmp_path / "onnx"), "source": "student-torch"}
    if onnx_margin is not None:
        onnx["margin"] = onnx_margin
    config = _write_config(tmp_path / "gate.yaml", dataset_dir, [
        {"name": "teacher-torch", "kind": "torch", "path": str(tmp_path / "teacher")},
        {"name": "student-torch", "kind": "torch", "path": str(tmp_path / "student"), "teacher": "teacher-torch"},
        onnx])
    scores = {name: v["quality"] for name, v in synthetic_results["variants"].items()}
    monkeypatch.setattr(cli, "evaluate", lambda config, *args, **kwargs: (
        synthetic_results, {}, gate_checks(config, scores)))  # the gate as evaluate() computes it
    run_dir = tmp_path / "run"
    if fails:
        with pytest.raises(GateFailed) as err:
            cli.run(["--config", config, "--out", str(run_dir)])
        assert "student-onnx loses 1.00 BLEU against its source student-torch (28.00 -> 27.00; margin 0.50)" in str(
            err.value)
        assert "student-torch loses" not in str(err.value)
        with pytest.raises(SystemExit) as status:  # a worse model is status 1; bad input is 2
            cli.main(["--config", config, "--out", str(run_dir)])
        assert status.value.code == 1
    else:
        cli.main(["--config", config, "--out", str(run_dir)])
    assert (run_dir / "report.md").is_file()
    assert f"report: {run_dir / 'report.md'}" in capsys.readouterr().out


@pytest.mark.slow
def test_a_whole_run_on_tiny_models(tmp_path, capsys, dataset_dir, tiny_t5_dir):
    """torch, its ONNX export and its torch int8, each in its worker process, on 5 test examples."""
    from export.exporter import export

    onnx_dir = export(str(tiny_t5_dir), tmp_path / "onnx")
    config = _write_config(
        tmp_path / "tiny.yaml", dataset_dir,
        [{"name": "teacher-torch", "kind": "torch", "path": str(tiny_t5_dir)},
         {"name": "teacher-onnx", "kind": "onnx", "path": str(onnx_dir), "source": "teacher-torch"},
         {"name": "teacher-torch-int8", "kind": "torch-int8", "path": str(tiny_t5_dir), "source": "teacher-torch",
          "margin": 100.0}],  # a random tiny model's int8 outputs may differ from fp32 by anything
        generation={"max_new_tokens": 8, "batch_size": 4}, quality={"bootstrap_samples": 50},
        speed={"batch_sizes": [1, 2], "num_beams": [1], "input_lengths": [4, 8], "new_tokens": 3,
               "natural_batches": 1, "warmup": 1, "repeats": 2, "threads": 1})
    run_dir = tmp_path / "run"
    cli.main(["--config", config, "--out", str(run_dir), "--limit", "5"])

    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"]["examples"] == 5 and results["dataset"]["max_references"] == 2
    assert results["gate"]["passed"] and len(results["gate"]["checks"]) == 2
    variants = results["variants"]
    assert list(variants) == ["teacher-torch", "teacher-onnx", "teacher-torch-int8"]
    predictions = {name: (run_dir / v["predictions"]).read_text().splitlines() for name, v in variants.items()}
    assert all(len(lines) == 5 for lines in predictions.values())
    # fp32 ONNX decodes the same tokens as PyTorch: same scores, reported as no difference at all
    assert predictions["teacher-onnx"] == predictions["teacher-torch"]
    assert variants["teacher-onnx"]["quality"] == variants["teacher-torch"]["quality"]
    bleu = variants["teacher-onnx"]["significance"]["bleu"]
    assert (bleu["delta"], bleu["p_value"], bleu["significant"]) == (0.0, 1.0, False)
    for name, v in variants.items():
        assert len(v["speed"]) == 2 * 2 + 2, name  # fixed: batches x lengths; natural: batches
        assert {c["speedup"] is not None for c in v["speed"]} == {True}
        assert v["memory"]["after_load_mb"] <= v["memory"]["peak_mb"] and v["size_bytes"] > 0
        assert v["threads"] == 1 and v["engine"]["torch_imported"] == (v["kind"] != "onnx")
    assert variants["teacher-torch"]["speed"][0]["speedup"] == 1.0
    # memory is each worker's own: the ONNX one never imported torch (this test's process did, and is far larger)
    assert variants["teacher-onnx"]["memory"]["peak_mb"] < variants["teacher-torch"]["memory"]["peak_mb"] - 100
    for file in ("report.md", "plots/quality_vs_latency.png", "plots/latency_vs_input_length.png",
                 "references.jsonl", "workers/teacher-onnx.json"):
        assert (run_dir / file).is_file(), file
    out = capsys.readouterr().out
    assert "| teacher-onnx | onnx |" in out and f"report: {run_dir / 'report.md'}" in out


def test_bad_input_is_one_line_and_status_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as status:
        cli.main(["--config", str(tmp_path / "none.yaml")])
    assert status.value.code == 2
    assert capsys.readouterr().err.startswith(f"python -m eval: error: Config file {tmp_path / 'none.yaml'} does not")
