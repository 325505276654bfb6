"""bench/gpu.sh: on the CPU, limited to a tiny model, the whole GPU run starts, measures every engine and writes its
results; the step timer counts steps after its warm-up."""

from __future__ import annotations

import json
import types

import pytest

from bench import gpu


def test_step_rate_times_the_steps_after_its_warm_up(tmp_path, monkeypatch):
    clock = iter([10.0, 12.0, 14.0, 16.0])
    monkeypatch.setattr(gpu.time, "perf_counter", lambda: next(clock))
    rate = gpu.StepRate(str(tmp_path / "rate.json"), skip=2)
    for step in range(1, 6):
        rate.on_train_batch_end(types.SimpleNamespace(global_step=step))  # type: ignore[arg-type]
    assert json.loads((tmp_path / "rate.json").read_text()) == {"steps": 3, "seconds": 6.0, "steps_per_s": 0.5}


@pytest.mark.slow
def test_limited_cpu_run_measures_every_engine(tmp_path, capsys):
    gpu.main(["--device", "cpu", "--limit", "--no-train", "--work", str(tmp_path / "work"), "--out",
              str(tmp_path / "out")])
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    cells = {c["engine"]: c for c in results["cells"]}
    assert set(cells) == set(gpu.ENGINES)
    assert not [c for c in cells.values() if "error" in c], cells
    assert all(c["ms"] > 0 for c in cells.values())
    onnx = [cells[e]["token_agreement_with_torch"] for e in ("onnx-fp16", "onnx-fp16-iobinding")]
    assert onnx[0] == onnx[1]  # binding changes no token
    assert results["fp16_vs_fp32"]["tiny"]["dtype"] == "fp16"
    assert "OnnxT5 fp16 + IO binding vs torch bf16" in (tmp_path / "out" / "results.md").read_text()


def test_cuda_without_a_cuda_build_names_what_is_missing(tmp_path, capsys):
    import onnxruntime
    import torch

    if torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has both")
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    assert exit_info.value.code == 2
    assert "--device cpu --limit" in capsys.readouterr().err
