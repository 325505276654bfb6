"""`bench.encoder_run`: one encoder graph timed on a padded batch, its memory peak read, bad arguments named."""

from __future__ import annotations

import pytest

from bench.encoder_run import main, measure
from bench.errors import BenchError
from export.exporter import export
from export.layout import ENCODER


@pytest.fixture(scope="module")
def tiny_export(tiny_t5_dir, tmp_path_factory):
    return export(str(tiny_t5_dir), tmp_path_factory.mktemp("encoder-run") / "onnx")


def test_an_encoder_run_is_timed_and_its_peak_read(tiny_export):
    out = measure(tiny_export / ENCODER, batch=4, length=8, runs=3, threads=1)
    assert out["ms"] > 0
    assert out["peak_mib"] >= out["loaded_mib"] > 0


def test_a_missing_graph_and_an_empty_batch_are_named(tiny_export, tmp_path, capsys):
    with pytest.raises(BenchError, match="python -m export"):
        measure(tmp_path / ENCODER, batch=1, length=8, runs=1, threads=1)
    with pytest.raises(SystemExit) as exit_info:
        main([str(tiny_export / ENCODER), "--batch", "0"])
    assert exit_info.value.code == 2
    assert "batch" in capsys.readouterr().err
