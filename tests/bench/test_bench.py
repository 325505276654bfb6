"""`python -m bench`: every engine of the project venv decodes what torch decodes; the best configuration per cell,
the second round, the goals and the report follow from the measured latencies as the report states them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import models, report, worker
from bench.__main__ import parse_args
from bench.errors import BenchError


def _job(tmp_path, engine: str, path, inputs, **extra) -> dict:
    return {"name": engine, "engine": engine, "path": str(path), "compute_type": "float32", "threads": 1,
            "inputs": str(inputs), "cells": [[2, 1, 8], [3, 1, 5], [2, 2, 8]], "new_tokens": 6,
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
    assert out["ctranslate2"]["versions"]["compute_type_used"] == "float32"

    # the other configurations a user would try: each decodes exactly the forced length, and says what it ran
    others = {"torch-bf16": worker.run(_job(tmp_path, "torch", tiny_t5_dir, inputs, autocast="bfloat16")),
              "torch-int8": worker.run(_job(tmp_path, "torch-int8", tiny_t5_dir, inputs)),
              "ct2-int8_float32": worker.run(_job(tmp_path, "ctranslate2", ct2, inputs, compute_type="int8_float32"))}
    for name, result in others.items():
        assert [np.asarray(c["tokens"]).shape for c in result["cells"]] == [(2, 7), (3, 7), (2, 7)], name
    assert others["torch-bf16"]["versions"]["autocast"] == "bfloat16"
    assert others["ct2-int8_float32"]["versions"]["compute_type_used"] == "int8_float32"


def _config(latencies: list[float], peak: float = 100.0, tokens=None) -> dict:
    cells = [{"batch_size": b, "num_beams": k, "input_length": 64, "latency_ms": {"median": ms},
              "tokens_per_s": b * 32 / ms * 1000, "tokens": tokens if tokens is not None else [[0, 5, 6]]}
             for (b, k), ms in zip(((1, 1), (8, 4)), latencies, strict=True)]
    return {"cells": cells, "memory": {"after_load_mb": peak / 2, "peak_mb": peak}, "load_seconds": 0.1,
            "versions": {}}


def _results() -> dict:
    cells = [[1, 1, 64], [8, 4, 64]]
    small = {"torch": _config([400.0, 2000.0]), "onnx-fp32": _config([50.0, 1100.0]),
             "onnx-int8": _config([25.0, 900.0], peak=150.0),
             "ct2-int8": _config([60.0, 800.0], tokens=[[0, 5, 7]]), "ct2-float32": _config([55.0, 1000.0]),
             "optimum-int8": _config([100.0, 1500.0]), "optimum-fp32-merged": {"error": "exit 1"}}
    small["ct2-float32"]["versions"] = {"compute_type": "bfloat16", "compute_type_used": "float32"}
    teacher = {"torch": _config([500.0, 2500.0], peak=600.0), "onnx-int8": _config([600.0, 2000.0])}
    return {"venvs": {"serve_venv": {"bytes": 150e6}},
            "models": {"t5-small-6-2": {"path": "x", "grid": "quick", "cells": cells, "configs": small,
                                        "failed_folders": {}},
                       "t5-small-6-6": {"path": "y", "grid": "quick", "cells": cells, "configs": teacher,
                                        "failed_folders": {"optimum": "optimum-cli failed"},
                                        "floor": {"bandwidth_gb_s": 10.0, "precisions": {
                                            "fp32": {"step_weight_mb": 100.0, "floor_ms": 10.0, "per_token_ms": 12.0,
                                                     "vs_floor": 1.2}}}}}}


def test_each_cell_pits_onnxt5_at_its_best_against_each_peer_at_its_best():
    results = _results()
    report.summarize(results)
    greedy, beam = results["models"]["t5-small-6-2"]["best"]
    assert greedy["ours"] == {"config": "onnx-int8", "ms": 25.0}
    assert greedy["best_peer"] == {"family": "ct2", "config": "ct2-float32", "ms": 55.0}
    assert greedy["vs_best_peer"] == pytest.approx(55 / 25)
    assert greedy["vs_family"] == pytest.approx({"torch": 16.0, "ct2": 55 / 25, "optimum": 4.0})
    assert beam["best_peer"]["config"] == "ct2-int8" and beam["vs_best_peer"] == pytest.approx(800 / 900)
    configs = results["models"]["t5-small-6-2"]["configs"]
    assert configs["onnx-int8"]["cells"][0]["vs_torch"] == pytest.approx(16.0)
    assert configs["ct2-int8"]["cells"][0]["agreement_with_torch"] == pytest.approx(2 / 3)
    # the teacher has no peer but torch: OnnxT5 int8 loses the greedy cell to it
    assert results["models"]["t5-small-6-6"]["best"][0]["vs_best_peer"] == pytest.approx(500 / 600)


def test_close_verdicts_are_measured_again_and_keep_the_lower_median():
    results = _results()
    report.summarize(results)
    model = results["models"]["t5-small-6-2"]
    again = report.close_calls(model)
    # 55/25 = 2.2 is not close; 800/900 is: OnnxT5's best and the best peer of that cell run again
    assert again == {"onnx-int8": [(8, 4, 64)], "ct2-int8": [(8, 4, 64)]}
    # a batch 1 greedy verdict close to that cell's 1.5x goal runs again too; the same verdict at batch 8 beam 4 not
    greedy, beam = model["best"]
    greedy["vs_best_peer"] = 1.375
    assert report.close_calls(model) == {"onnx-int8": [(1, 1, 64), (8, 4, 64)], "ct2-float32": [(1, 1, 64)],
                                         "ct2-int8": [(8, 4, 64)]}
    greedy["vs_best_peer"], beam["vs_best_peer"] = 55 / 25, 1.375
    assert report.close_calls(model) == {}
    # a loss is measured again however far it lies from 1: a slow spell made one cell read 0.72x that read 1.18x
    # paired; so is a batch 1 greedy verdict far under its goal
    greedy["vs_best_peer"], beam["vs_best_peer"] = 0.5, 0.5
    assert report.close_calls(model) == {"onnx-int8": [(1, 1, 64), (8, 4, 64)], "ct2-float32": [(1, 1, 64)],
                                         "ct2-int8": [(8, 4, 64)]}
    greedy["vs_best_peer"], beam["vs_best_peer"] = 55 / 25, 1.375
    report.merge_recheck(model, "onnx-int8", {"cells": [{"batch_size": 8, "num_beams": 4, "input_length": 64,
                                                         "latency_ms": {"median": 700.0}}]}, new_tokens=32)
    report.merge_recheck(model, "ct2-int8", {"cells": [{"batch_size": 8, "num_beams": 4, "input_length": 64,
                                                        "latency_ms": {"median": 850.0}}]}, new_tokens=32)
    report.merge_recheck(model, "ct2-int8", {"error": "exit 1"}, new_tokens=32)  # a failed recheck changes nothing
    report.summarize(results)
    beam = model["best"][1]
    assert model["configs"]["onnx-int8"]["cells"][1]["rounds_ms"] == [900.0, 700.0]
    assert model["configs"]["ct2-int8"]["cells"][1]["latency_ms"]["median"] == 800.0  # its first round was lower
    assert beam["vs_best_peer"] == pytest.approx(800 / 700)
    assert model["configs"]["onnx-int8"]["cells"][1]["tokens_per_s"] == pytest.approx(8 * 32 / 0.7)


def test_a_cell_slower_than_one_of_more_work_is_measured_again():
    """`outliers`: a configuration's cell over 1.5x as slow as one of its cells with at least as much work (batch,
    beams and input length alike) is a slowed reading, whatever its verdict; `to_measure_again` adds those cells to
    the close verdicts', once each."""
    def cells(ms: dict) -> dict:
        return {"cells": [{"batch_size": b, "num_beams": k, "input_length": n, "latency_ms": {"median": t}}
                          for (b, k, n), t in ms.items()]}

    model = {"configs": {
        # the run that made this rule: batch 8 beam 4 with 16 tokens took 11x as long as with 64
        "ct2-float32": cells({(8, 4, 16): 1093.0, (8, 4, 64): 96.0, (8, 4, 256): 150.0, (8, 1, 16): 20.0,
                              (1, 1, 16): 10.0}),
        # 1.4x slower than a cell of more work: this machine's noise, not measured again; a larger batch with a
        # shorter input is not more work in every respect
        "onnx-int8": cells({(8, 1, 16): 14.0, (8, 4, 16): 10.0, (32, 1, 16): 40.0, (8, 1, 256): 30.0,
                            (1, 1, 256): 35.0}),
        "broken": {"error": "exit 1"}}}
    assert report.outliers(model) == {"ct2-float32": [(8, 4, 16)]}

    results = _results()
    report.summarize(results)
    both = results["models"]["t5-small-6-2"]
    both["configs"]["ct2-int8"]["cells"][0]["latency_ms"]["median"] = 1300.0  # batch 1 greedy above batch 8 beam 4
    assert report.to_measure_again(both) == {"onnx-int8": [(8, 4, 64)], "ct2-int8": [(1, 1, 64), (8, 4, 64)]}


def test_further_rounds_alternate_the_order_and_stop_once_a_verdict_is_settled(monkeypatch, tmp_path):
    """`recheck`: the reverse order first, then the first order again; a cell the second round settles (OnnxT5 now
    clearly faster) is not measured a third time."""
    import bench.__main__ as main

    results = _results()
    report.summarize(results)
    for name, model in results["models"].items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        model.update(path=str(tmp_path / name), folders={"onnx": "o", "ct2-int8": "c", "source": "s"}, inputs="i")
    del results["models"]["t5-small-6-6"]  # its only peer is torch; one model is enough here
    calls = []
    speeds = {"onnx-int8": [700.0, 500.0], "ct2-int8": [850.0, 850.0]}

    def fake_run_config(c, name, folder, cells, inputs, args, config, tmp, repeats=None):
        calls.append(c.name)
        ms = speeds[c.name].pop(0)
        return {"cells": [{"batch_size": b, "num_beams": k, "input_length": n, "latency_ms": {"median": ms}}
                          for b, k, n in cells]}

    monkeypatch.setattr(main, "run_config", fake_run_config)
    monkeypatch.setattr(main, "BY_NAME", {n: type("C", (), {"name": n, "folder": "onnx"})() for n in speeds})
    args = parse_args(["--recheck-rounds", "3"])
    main.recheck(results, args, tmp_path)
    # round 1: the reverse of close_calls' order; 800/700 = 1.14 is still close, so round 2 in the first order;
    # 800/500 = 1.6 is settled, so no round 3
    assert calls == ["ct2-int8", "onnx-int8", "onnx-int8", "ct2-int8"]
    beam = results["models"]["t5-small-6-2"]["best"][1]
    assert beam["vs_best_peer"] == pytest.approx(800 / 500)
    assert results["models"]["t5-small-6-2"]["configs"]["onnx-int8"]["cells"][1]["rounds_ms"] == [900.0, 700.0, 500.0]


def test_results_are_written_after_each_model_marked_partial_without_tokens(tmp_path):
    """A run stopped after its first models keeps them: results.json says it is not complete, results.md says what
    was measured of what was planned; neither holds the tokens or the worker's input file."""
    from bench.__main__ import write_results
    from eval.environment import environment

    results = _results()
    results.update(planned=["t5-small-6-2", "t5-small-6-6", "t5-base-12-12"], environment=environment(2),
                   created="2026-12-02T00:00:00+00:00",
                   threads=2, new_tokens=32, repeats=3, min_seconds=2.0)
    results["models"]["t5-small-6-2"].update(inputs="inputs.npz", folders={"onnx": "x"})
    report.summarize(results)
    text = write_results(results, tmp_path, 12.0, complete=False)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["complete"] is False and saved["seconds"] == 12.0
    assert "inputs" not in saved["models"]["t5-small-6-2"]
    assert saved["models"]["t5-small-6-2"]["folders"] == {"onnx": "x"}  # for --resume to check
    assert all("tokens" not in c for m in saved["models"].values() for out in m["configs"].values()
               for c in out.get("cells", []))
    assert results["models"]["t5-small-6-2"]["configs"]["torch"]["cells"][0]["tokens"]  # the run's own copy keeps them
    assert "**Partial**" in text and "t5-base-12-12" in text and (tmp_path / "results.md").read_text() == text
    assert (tmp_path / "speedup.png").is_file()
    assert "**Partial**" not in write_results(results, tmp_path, 13.0, complete=True)


def test_goals_follow_from_the_best_per_cell():
    results = _results()
    report.summarize(results)
    goals = {g["goal"].split(":")[0]: g for g in report.goals(results)}
    every = goals["every cell of the t5-small and t5-base shapes"]
    assert every["ratio"] == pytest.approx(500 / 600) and every["met"] is False
    assert [c[:5] for c in every["cells"]] == [("t5-small-6-2", 8, 4, 64, "ct2-int8"),
                                               ("t5-small-6-6", 1, 1, 64, "torch")]
    greedy = goals["batch 1 greedy, every shape"]
    assert greedy["ratio"] == pytest.approx(500 / 600) and greedy["where"] == ["t5-small-6-6", 64, "torch"]
    slower = goals["no cell where OnnxT5 at its best is slower than torch fp32 on the same model"]
    assert slower["ratio"] == 1 and slower["cells"] == [("t5-small-6-6", 1, 1, 64)]
    assert goals["peak RSS"]["ratio"] == pytest.approx(0.25) and goals["peak RSS"]["met"]
    assert goals["venv holding only what OnnxT5 needs, MB"]["met"]
    assert not any("time per token" in g for g in goals)  # the floor goal is for t5-base and mt5-small only
    results["models"]["t5-base-12-12"] = results["models"].pop("t5-small-6-6")
    floor = {g["goal"]: g for g in report.goals(results)}[
        "t5-base-12-12 fp32: time per token at batch 1 greedy / bandwidth floor"]
    assert floor["ratio"] == pytest.approx(1.2) and floor["met"]


def test_the_report_shows_the_best_per_cell_fallbacks_and_failures(tmp_path):
    from eval.environment import environment

    results = {**_results(), "created": "2026-11-26T00:00:00+00:00", "environment": environment(2), "threads": 2,
               "new_tokens": 32, "repeats": 3, "min_seconds": 2.0}
    report.summarize(results)
    results["goals"] = report.goals(results)
    text = report.render(results)
    assert "| 1 | greedy | 64 | onnx-int8 | 25.00 | ct2-float32 | 55.00 | **2.20x** | 2.20x | 4.00x | 16.00x |" \
        in text
    assert "| ct2-float32 | bfloat16 | float32 |" in text  # the compute type CTranslate2 fell back from
    assert "| t5-small-6-2 | optimum-fp32-merged | exit 1 |" in text
    assert "| t5-small-6-6 | optimum | optimum-cli failed |" in text
    assert "| fp32 | 100.00 | 10.00 | 12.00 | 1.20x |" in text
    report.plot(results, tmp_path / "speedup.png")
    assert (tmp_path / "speedup.png").stat().st_size > 10_000
    json.dumps(results)  # results.json is plain JSON


def test_the_probe_keeps_torch_and_each_family_s_contenders():
    configs = {"torch": _config([400.0, 2000.0]), "torch-bf16": _config([300.0, 2100.0]),
               "torch-int8": _config([200.0, 1500.0]), "ct2-int8": _config([60.0, 800.0]),
               "ct2-int8-mkl": _config([150.0, 1100.0]), "ct2-float32": _config([70.0, 1100.0]),
               "onnx-fp32": _config([50.0, 1100.0]), "onnx-int8": _config([40.0, 900.0]),
               "optimum-int8": {"error": "x"}}
    kept = report.kept_after_probe(configs)
    # torch always; torch-bf16 is 1.5x and 1.4x torch-int8: out; ct2-float32 is within 1.3x of ct2-int8 at batch 1
    assert kept == ["torch", "torch-int8", "ct2-int8", "ct2-float32", "onnx-fp32", "onnx-int8"]
    model = {"configs": configs}
    more = _config([10.0, 20.0], peak=500.0)
    for c, k in zip(more["cells"], ((32, 1), (32, 4)), strict=True):
        c["batch_size"], c["num_beams"] = k
    report.merge_cells(model, "ct2-int8", more)
    assert [report.key(c) for c in configs["ct2-int8"]["cells"]] == [(1, 1, 64), (8, 4, 64), (32, 1, 64), (32, 4, 64)]
    assert configs["ct2-int8"]["memory"]["peak_mb"] == 500.0
    report.merge_cells(model, "onnx-fp32", {"error": "killed"})
    assert configs["onnx-fp32"]["error"] == "killed" and len(configs["onnx-fp32"]["cells"]) == 2


def test_timed_calls_repeat_until_the_time_budget_within_the_bounds():
    calls = []
    seconds, out = worker.timed_calls(lambda: calls.append(1) or len(calls), repeats=3, min_seconds=0.0,
                                      max_repeats=10)
    assert len(seconds) == 3 and out == 3
    seconds, _ = worker.timed_calls(lambda: None, repeats=2, min_seconds=1e6, max_repeats=7)
    assert len(seconds) == 7  # a budget no call fills stops at max_repeats


def test_engine_configurations_are_chosen_by_name_or_family(tmp_path):
    args = parse_args(["--engines", "torch,onnx-int8,ct2"])
    names = [c.name for c in args.configs]
    assert names[:2] == ["torch", "onnx-int8"] and len(names) == 10
    assert {c.env["CT2_USE_MKL"] for c in args.configs if c.family == "ct2"} == {"0", "1"}
    with pytest.raises(SystemExit):
        parse_args(["--engines", "onnx-int8"])  # torch is what every output is checked against
    with pytest.raises(SystemExit):
        parse_args(["--engines", "torch,ct2-int4"])
    with pytest.raises(SystemExit):
        parse_args(["--models", "t5-huge"])


def test_missing_venvs_and_students_are_named(tmp_path):
    args = parse_args(["--serve-python", str(tmp_path / "none/bin/python"), "--student", str(tmp_path)])
    with pytest.raises(BenchError, match="make bench` creates the serve venv"):
        models.check_venvs(args, args.configs)
    args = parse_args(["--engines", "torch", "--student", str(tmp_path / "nothing"), "--models", "student"])
    with pytest.raises(BenchError, match="Make it with `make distill`"):
        models.make_models(args)


def test_the_worker_imports_nothing_a_serving_venv_lacks():
    """`python -m bench.worker` and `bench.served` run in a venv of numpy, onnxruntime and tokenizers: importing them
    (and the evaluation engines they share) must not load any other library; each engine loads its own when it
    starts."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys, bench.worker, bench.served; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'transformers', 'onnxruntime', "
            "'tokenizers', 'yaml', 'datasets', 'lightning', 'export', 'distill'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_whole_bench_runs_on_a_tiny_student(tmp_path, tiny_t5_dir):
    """`python -m bench` end to end on the tiny model as the student: probe, grid, second round, floor, report."""
    import sys

    from bench.__main__ import run

    data = tmp_path / "data"
    data.mkdir()
    (data / "test.jsonl").write_text("".join(json.dumps({"en": f"In the beginning {i} God created."}) + "\n"
                                             for i in range(20)))
    out = tmp_path / "results"
    run(["--models", "student", "--student", str(tiny_t5_dir), "--tokenizer", str(tiny_t5_dir), "--data", str(data),
         "--grid", "quick", "--engines", "torch,torch-bf16,onnx,ct2-int8-onednn,ct2-float32-onednn", "--threads", "1",
         "--new-tokens", "4", "--repeats", "1", "--min-seconds", "0", "--recheck-repeats", "1",
         "--work", str(tmp_path / "work"), "--out", str(out), "--serve-python", sys.executable])
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is True
    model = results["models"]["student"]
    assert model["probe"] == [[1, 1, 64], [8, 4, 64]] and "torch" in model["kept"]
    assert {r["ours"]["config"] for r in model["best"]} <= {"onnx-fp32", "onnx-int8", "onnx-int4"}
    assert all(r["vs_best_peer"] > 0 for r in model["best"])
    for name in model["kept"]:
        assert len(model["configs"][name]["cells"]) == 4, name
    assert set(model["floor"]["precisions"]) == {"fp32", "int8", "int4"}
    assert model["configs"]["onnx-fp32"]["cells"][0]["agreement_with_torch"] == 1.0
    # what --resume checks: the export measured, by its id
    meta = json.loads((tmp_path / "work" / "converted" / "student" / "onnx" / "export_meta.json").read_text())
    assert model["export_id"] == meta["export_id"] and model["folders"]["onnx"].endswith("student/onnx")
    text = (out / "results.md").read_text()
    assert "Best per cell:" in text and "## Goals" in text and (out / "speedup.png").is_file()


def test_a_failing_step_names_its_last_line(capsys):
    import sys

    from bench.steps import run_step

    with pytest.raises(BenchError, match=r"converting failed \(exit 1\): ValueError: no bfloat16 here"):
        run_step([sys.executable, "-c", "print('working'); raise ValueError('no bfloat16 here')"], "converting")
    assert "working" in capsys.readouterr().out  # the child's output still reaches the console
