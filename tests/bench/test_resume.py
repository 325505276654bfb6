"""`python -m bench --resume`: a stopped run's finished models are kept and the run goes on with the next; what is no
longer what was measured (another export, a changed source, a folder gone) is measured again; a run with other
settings, on another CPU, or already finished is not resumed."""

from __future__ import annotations

import json
import os
import re

import pytest

import bench.__main__ as main
from bench.errors import BenchError
from export.layout import META_FILE, source_fingerprint

MODELS = "t5-small-6-6,t5-small-6-2"
ARGS = ["--models", MODELS, "--engines", "torch,onnx-int8", "--recheck-repeats", "0"]


class Stop(Exception):
    """The run stopped (Ctrl-C, the machine going away) while it measured a model."""


def _model_folder(tmp_path, name):
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"eos_token_id": 1}))
    (folder / "model.safetensors").write_bytes(b"weights")
    return folder


def _export(tmp_path, name, source, export_id):
    onnx = tmp_path / "converted" / name / "onnx"
    onnx.mkdir(parents=True, exist_ok=True)
    (onnx / META_FILE).write_text(json.dumps({"export_id": export_id, "source_fingerprint":
                                              source_fingerprint(source)}))
    return onnx


@pytest.fixture
def fake_bench(monkeypatch, tmp_path):
    """`run` with the models, the venvs, the inputs and each model's measurement faked: `measured` lists the models
    measured, `stop_at` names one whose measurement stops the run."""
    folders = {name: _model_folder(tmp_path, name) for name in MODELS.split(",")}
    state = {"measured": [], "inputs": [], "stop_at": None}

    def measure_model(name, folder, args, tmp):
        if name == state["stop_at"]:
            raise Stop(name)
        state["measured"].append(name)
        onnx = _export(tmp_path, name, folder, f"id-{name}-{len(state['measured'])}")
        loaded = {"memory": {"after_load_mb": 50.0, "peak_mb": 100.0}, "load_seconds": 0.1}
        cells = [{"batch_size": 1, "num_beams": 1, "input_length": 64, "latency_ms": {"median": ms},
                  "tokens_per_s": 1.0, "tokens": [[0, 5]]} for ms in (10.0,)]
        return {"path": str(folder), "grid": "quick", "cells": [[1, 1, 64]], "probe": [[1, 1, 64]],
                "failed_folders": {}, "export_id": f"id-{name}-{len(state['measured'])}",
                "folders": {"source": folder, "onnx": onnx}, "inputs": tmp / "inputs.npz",
                "configs": {"torch": {"cells": [dict(c, latency_ms={"median": 40.0}) for c in cells], **loaded},
                            "onnx-int8": {"cells": cells, **loaded}}}

    def model_inputs(name, folder, grid_name, args, tmp):
        state["inputs"].append(name)
        return tmp / f"{name}.npz"

    monkeypatch.setattr(main, "check_venvs", lambda args, configs: {})
    monkeypatch.setattr(main, "make_models", lambda args: {n: folders[n] for n in args.models})
    monkeypatch.setattr(main, "measure_model", measure_model)
    monkeypatch.setattr(main, "model_inputs", model_inputs)
    monkeypatch.setattr(main, "plot", lambda results, path: None)
    state["out"], state["folders"] = tmp_path / "results", folders
    return state


def _stopped_after_first_model(fake_bench):
    fake_bench["stop_at"] = "t5-small-6-2"
    with pytest.raises(Stop):
        main.run([*ARGS, "--out", str(fake_bench["out"])])
    fake_bench["stop_at"] = None
    saved = json.loads((fake_bench["out"] / "results.json").read_text())
    assert saved["complete"] is False and list(saved["models"]) == ["t5-small-6-6"]
    return saved


def test_a_stopped_run_is_taken_up_at_the_model_it_stopped_in(fake_bench, capsys):
    stopped = _stopped_after_first_model(fake_bench)
    stopped["seconds"] = 1000.0  # the stopped run's time counts in the whole run's
    (fake_bench["out"] / "results.json").write_text(json.dumps(stopped))
    main.run([*ARGS, "--out", str(fake_bench["out"]), "--resume"])
    assert fake_bench["measured"] == ["t5-small-6-6", "t5-small-6-2"]  # the first model was not measured again
    assert fake_bench["inputs"] == ["t5-small-6-6"]  # the kept model's inputs, for the further rounds
    done = json.loads((fake_bench["out"] / "results.json").read_text())
    assert done["complete"] is True and list(done["models"]) == ["t5-small-6-6", "t5-small-6-2"]
    assert done["created"] == stopped["created"] and len(done["resumed"]) == 1
    assert 1000.0 <= done["seconds"] < 1100.0
    assert done["models"]["t5-small-6-6"]["best"][0]["vs_best_peer"] == pytest.approx(4.0)
    assert "t5-small-6-6 kept from the stopped run" in capsys.readouterr().out
    assert "Resumed (" in (fake_bench["out"] / "results.md").read_text()


@pytest.mark.parametrize("change, reason", [
    ("export", "holds another export than the one measured"),
    ("source", "changed since t5-small-6-6 was measured"),
    ("folder", "onnx folder is gone"),
])
def test_a_model_that_is_no_longer_what_was_measured_is_measured_again(fake_bench, capsys, tmp_path, change,
                                                                        reason):
    _stopped_after_first_model(fake_bench)
    onnx = tmp_path / "converted" / "t5-small-6-6" / "onnx"
    if change == "export":
        _export(tmp_path, "t5-small-6-6", fake_bench["folders"]["t5-small-6-6"], "another-export")
    elif change == "source":  # a retrained student: new weights, a new modification time
        weights = fake_bench["folders"]["t5-small-6-6"] / "model.safetensors"
        weights.write_bytes(b"other weights")
        os.utime(weights, ns=(1, 1))
    else:
        (onnx / META_FILE).unlink()
        onnx.rmdir()
    main.run([*ARGS, "--out", str(fake_bench["out"]), "--resume"])
    assert fake_bench["measured"] == ["t5-small-6-6", "t5-small-6-6", "t5-small-6-2"]
    assert re.search(f"measuring t5-small-6-6 again: [^\n]*{reason}", capsys.readouterr().out)


def test_what_cannot_be_resumed_is_named(fake_bench, monkeypatch):
    out = ["--out", str(fake_bench["out"])]
    with pytest.raises(BenchError, match=r"there is no .*results\.json to resume; run without --resume"):
        main.run([*ARGS, *out, "--resume"])
    _stopped_after_first_model(fake_bench)
    with pytest.raises(BenchError, match=r"other settings \(new_tokens 32 -> 16\): resume it with its own"):
        main.run([*ARGS, *out, "--resume", "--new-tokens", "16"])
    cpu = main.environment(2)["cpu"]
    monkeypatch.setattr(main, "environment", lambda threads: {"cpu": "Another CPU", "threads": threads})
    with pytest.raises(BenchError, match=f"ran on {re.escape(cpu)}, this machine is Another CPU"):
        main.run([*ARGS, *out, "--resume"])
    monkeypatch.setattr(main, "environment", lambda threads: {"cpu": cpu, "threads": threads})
    main.run([*ARGS, *out, "--resume"])
    with pytest.raises(BenchError, match=r"finished; nothing to resume"):
        main.run([*ARGS, *out, "--resume"])
