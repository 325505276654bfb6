"""An onnx variant with `quantized: int8` counts the one-row graph in its size where the runtime steps on it."""

from __future__ import annotations

from pathlib import Path


def test_int8_engine_counts_the_one_row_graph_it_steps_on(tmp_path, tiny_t5_dir, monkeypatch):
    from eval.engines import load_engine
    from export.exporter import export
    from export.layout import ONE_ROW, ONE_ROW_SHARED, data_name
    from export.runtime import model as runtime_model

    out = export(str(tiny_t5_dir), tmp_path / "onnx", int8=True)
    small = load_engine("onnx", str(out), quantized="int8")
    assert ONE_ROW not in {Path(f).name for f in small.files}  # a decoder this small steps on the int8 graph alone
    monkeypatch.setattr(runtime_model, "ONE_ROW_MIN_STEP_BYTES", 0)
    large = load_engine("onnx", str(out), quantized="int8")
    one_row = (ONE_ROW_SHARED, data_name(ONE_ROW))  # the graph stepped on, and the weights it reads
    assert {Path(f).name for f in large.files} - {Path(f).name for f in small.files} == set(one_row)
    assert large.size_bytes == small.size_bytes + sum((out / name).stat().st_size for name in one_row)
