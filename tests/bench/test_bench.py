"""`python -m bench`: every engine of the project venv decodes what torch decodes; ratios, agreement and goals are
computed from the measured latencies as the report states them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import models, report, worker
from bench.__main__ import parse_args
from bench.errors import BenchError


def _job(tmp_path, engine: str, path, inputs, **extra) -> dict:
    return {"name": engine, "engine": engine, "path": str(path), "quantized": False, "compute_type": "float32",
            "threads": 1, "inputs": str(inputs), "cells": [[2, 1, 8], [3, 1, 5], [2, 2, 8]], "new_tokens": 6,
            "warmup": 0, "repeats": 1, "start_id": 0, "eos_id": 1, "pad_id": 0, **extra}


@pytest.mark.slow
def test_torch_onnx_and_ctranslate2_workers_decode_the_same_greedy_tokens(tmp_path, tiny_t5_dir):
    import ctranslate2

    from export.exporter import export

    onnx = export(str(tiny_t5_dir), tmp_path / "onnx")
    ct2 = tmp_path / "ct2"
    ctranslate2.converters.TransformersConverter(str(tiny_t5_dir)).convert(str(ct2), quantization="float32")
    rng = np.random.default_rng(0)
    inputs = tmp_path / "inputs.npz"
    arrays = {f"ids_{b}_{n}": np.concatenate([rng.integers(3, 90, size=(b, n - 1)), np.ones((b, 1), int)], axis=1)
              for b, n in ((2, 8), (3, 5))}
    np.savez(inputs, **arrays)

    out = {engine: worker.run(_job(tmp_path, engine, path, inputs))
           for engine, path in (("torch", tiny_t5_dir), ("onnx", onnx), ("ctranslate2", ct2))}
    for engine, result in out.items():
        assert [np.asarray(c["tokens"]).shape for c in result["cells"]] == [(2, 7), (3, 7), (2, 7)], engine
        assert result["memory"]["peak_mb"] >= result["memory"]["after_load_mb"] > 0
        assert all(c["latency_ms"]["median"] > 0 for c in result["cells"])
    for engine in ("onnx", "ctranslate2"):  # greedy cells: the same tokens as torch, start token first
        for i in (0, 1):
            assert out[engine]["cells"][i]["tokens"] == out["torch"]["cells"][i]["tokens"], engine
    assert out["onnx"]["cells"][2]["tokens"] == out["torch"]["cells"][2]["tokens"]  # beam search too


def _engine(latencies: list[float], peak: float = 100.0, tokens=None) -> dict:
    cells = [{"batch_size": b, "num_beams": k, "input_length": 64, "latency_ms": {"median": ms},
              "tokens_per_s": b * 32 / ms * 1000, "tokens": tokens if tokens is not None else [[0, 5, 6]]}
             for (b, k), ms in zip(((1, 1), (8, 4)), latencies, strict=True)]
    return {"cells": cells, "memory": {"after_load_mb": peak / 2, "peak_mb": peak}, "load_seconds": 0.1}


def _results() -> dict:
    small = {"torch": _engine([400.0, 2000.0]), "onnx-int8": _engine([40.0, 900.0], peak=150.0),
             "ct2-int8": _engine([60.0, 800.0], tokens=[[0, 5, 7]]), "optimum-int8": _engine([100.0, 1500.0])}
    teacher = {"torch": _engine([500.0, 2500.0], peak=600.0), "onnx-int8": _engine([600.0, 2000.0])}
    return {"grid": {"batch_sizes": [1, 8], "num_beams": [1, 4], "input_lengths": [64]},
            "venvs": {"serve_venv": {"bytes": 150e6}},
            "models": {"t5-small-6-2": {"path": "x", "engines": small}, "t5-small-6-6": {"path": "y",
                                                                                          "engines": teacher}}}


def test_ratios_agreement_and_goals_follow_from_the_latencies():
    results = _results()
    report.summarize(results)
    cell = results["models"]["t5-small-6-2"]["engines"]["onnx-int8"]["cells"][0]
    assert cell["vs_torch"] == pytest.approx(10.0) and cell["vs_ct2_int8"] == pytest.approx(1.5)
    assert cell["agreement_with_torch"] == 1.0
    assert results["models"]["t5-small-6-2"]["engines"]["ct2-int8"]["cells"][0]["agreement_with_torch"] == \
        pytest.approx(2 / 3)

    goals = {g["goal"]: g for g in report.goals(results)}
    ct2 = goals["t5-small 6-2, batch 1 greedy: OnnxT5 int8 vs CTranslate2 int8"]
    assert ct2["ratio"] == pytest.approx(1.5) and ct2["met"]
    assert goals["t5-small 6-2, batch 1 greedy: OnnxT5 int8 vs optimum int8"]["ratio"] == pytest.approx(2.5)
    beam = goals["t5-small 6-2, batch 8 beam 4: OnnxT5 int8 vs CTranslate2 int8"]
    assert beam["ratio"] == pytest.approx(800 / 900) and beam["met"] is False
    assert goals["batch 1 greedy: torch teacher 6-6 -> OnnxT5 int8 student 6-2"]["ratio"] == pytest.approx(12.5)
    slower = goals["no cell where OnnxT5 is slower than torch on the same model"]
    assert slower["met"] is False and slower["cells"] == [("t5-small-6-6", "onnx-int8", 1, 1, 64,
                                                           pytest.approx(500 / 600))]
    memory = goals["peak RSS: OnnxT5 int8 student 6-2 / torch teacher 6-6"]
    assert memory["ratio"] == pytest.approx(0.25) and memory["met"]
    assert goals["venv holding only what OnnxT5 needs, MB"]["met"]
    assert goals["default student, batch 1 greedy: OnnxT5 int8 vs CTranslate2 int8"]["ratio"] is None


def test_the_report_shows_every_engine_and_goal(tmp_path):
    from eval.environment import environment

    results = {**_results(), "created": "2026-11-26T00:00:00+00:00", "environment": environment(2), "threads": 2,
               "new_tokens": 32}
    report.summarize(results)
    results["goals"] = report.goals(results)
    text = report.render(results)
    assert "| 1 | greedy | 64 | onnx-int8 | 40.00 |" in text and "10.00x | 1.50x |" in text
    assert "| t5-small 6-2, batch 8 beam 4: OnnxT5 int8 vs CTranslate2 int8 | 64 | 0.89 | 1.00 | **no** |" in text
    report.plot(results, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").stat().st_size > 10_000
    json.dumps(results)  # results.json is plain JSON


def test_missing_venvs_and_students_are_named(tmp_path):
    args = parse_args(["--serve-python", str(tmp_path / "none/bin/python"), "--student", str(tmp_path)])
    with pytest.raises(BenchError, match="make bench` creates the serve venv"):
        models.check_venvs(args)
    args = parse_args(["--engines", "torch", "--student", str(tmp_path / "nothing"), "--models", "student"])
    with pytest.raises(BenchError, match="Make it with `make distill`"):
        models.make_models(args)
    with pytest.raises(SystemExit):
        parse_args(["--engines", "onnx-int8"])  # torch is what every output is checked against


def test_the_worker_imports_nothing_a_serving_venv_lacks():
    """`python -m bench.worker` runs in a venv of numpy, onnxruntime and tokenizers: importing it (and the evaluation
    engines it shares) must not load any other library; each engine loads its own when it starts."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, bench.worker; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'onnxruntime', "
            "'tokenizers', 'yaml', 'datasets', 'lightning', 'export', 'distill'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
