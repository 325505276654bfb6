"""The check against PyTorch allows atol + rtol * max |PyTorch output|: float noise of large logits passes, a wrong
graph of a small model still fails, and a failure names the difference, the tolerance and the options that set it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from export.__main__ import main
from export.errors import ExportError
from export.validate import ATOL, RTOL, Validation, _compare


def compare(ref: np.ndarray, got: np.ndarray, check: Validation | None = None) -> dict[str, dict[str, float]]:
    diffs: dict[str, dict[str, float]] = {}
    _compare("decoder_model.onnx", ["logits"], [got], [ref], check or Validation(), diffs,
             "at the first step")
    return diffs


def test_float_noise_of_large_logits_passes_and_the_same_difference_on_small_logits_fails():
    rng = np.random.default_rng(0)
    large = (rng.standard_normal((3, 4, 48)) * 12).astype(np.float32)  # logits in the tens
    noise = np.zeros_like(large)
    noise[0, 0, 0] = 2.7e-3  # the difference seen on such a model: float rounding, the export being correct
    assert compare(large, large + noise)["decoder_model.onnx"]["logits"] == pytest.approx(2.7e-3, rel=1e-3)

    small = large / 12  # logits of a few units: the same difference is far more than their rounding
    message = (r"(?s)output 'logits' differs from PyTorch by 0\.0027 \(max \|diff\|\) at the first step, above its "
               r"tolerance .*atol 0\.0001 \+ rtol 0\.0002 x max \|PyTorch logits\|.*--atol A --rtol R")
    with pytest.raises(ExportError, match=message):
        compare(small, small + noise)
    assert compare(small, small + noise, Validation(rtol=2e-3))  # allowed when asked for


def test_the_defaults_stay_strict_for_a_tiny_model():
    ref = np.linspace(-5, 5, 96, dtype=np.float32).reshape(2, 48)  # the tiny test models' logits: a few units
    tolerance = Validation().tolerance(ref)
    assert tolerance == pytest.approx(ATOL + RTOL * 5) and tolerance < 2e-3  # a wrong graph moves logits by >> 1e-2
    with pytest.raises(ExportError, match=r"differs from PyTorch by 0\.01"):
        compare(ref, ref + 1e-2)
    with pytest.raises(ExportError, match="differs from PyTorch by nan"):
        compare(ref, np.full_like(ref, np.nan))


@pytest.mark.parametrize("kwargs", [{"atol": -1e-4}, {"rtol": float("nan")}, {"rtol": float("inf")}])
def test_a_negative_or_non_finite_tolerance_is_refused(kwargs):
    with pytest.raises(ExportError, match=r"must be a finite number >= 0"):
        Validation(**kwargs)


@pytest.mark.parametrize(("option", "value"), [("--atol", "-1"), ("--rtol", "nan"), ("--rtol", "inf"),
                                               ("--atol", "tiny")])
def test_the_command_refuses_a_bad_tolerance(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "out"), "--no-tokenizer", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: " in capsys.readouterr().err


def test_a_model_with_large_logits_exports_and_an_impossible_tolerance_names_the_options(tmp_path, tiny_t5, capsys):
    model = tiny_t5(tmp_path / "model", "t5v1.1-gated-untied")
    with torch.no_grad():
        model.lm_head.weight *= 10  # logits in the tens, as trained models have
    model.save_pretrained(tmp_path / "model")
    main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "onnx"), "--no-tokenizer"])
    meta = json.loads((tmp_path / "onnx" / "export_meta.json").read_text())
    assert meta["validation"]["max_abs_diff"]["decoder_model.onnx"]["logits"] < 1e-2

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "model"), "--out", str(tmp_path / "strict"), "--no-tokenizer", "--atol", "0",
              "--rtol", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.replace("\r", "\n")  # the weights' loading bar shares stderr
    assert "\npython -m export: error: " in err and "above its tolerance 0 (atol 0 + rtol 0" in err
    assert "--atol A --rtol R" in err and "Traceback" not in err
    assert not (tmp_path / "strict").exists()
