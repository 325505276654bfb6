"""`bench.load_peak`: one graph's load measured in a fresh process, and a missing graph named."""

from __future__ import annotations

import pytest

from bench.errors import BenchError
from bench.load_peak import load_peak
from export.exporter import export
from export.layout import DECODER_MERGED


@pytest.fixture(scope="module")
def tiny_export(tiny_t5_dir, tmp_path_factory):
    return export(str(tiny_t5_dir), tmp_path_factory.mktemp("load-peak") / "onnx")


def test_a_graph_load_reports_its_peak_and_its_data_file(tiny_export):
    row = load_peak(tiny_export / DECODER_MERGED)
    assert row["peak_gb"] >= row["resident_gb"] > 0
    assert row["data_gb"] == (tiny_export / f"{DECODER_MERGED}_data").stat().st_size / 1e9


def test_a_missing_graph_is_named_with_the_command_that_makes_it(tmp_path):
    with pytest.raises(BenchError, match="python -m export"):
        load_peak(tmp_path / DECODER_MERGED)
