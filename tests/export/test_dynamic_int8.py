"""`export.dynamic_int8` writes the graph onnxruntime's `quantize_dynamic` writes: the same nodes, the same tensors
(names, types and bytes), a data file of its own; for every tiny configuration and each of the three graphs, with the
exclusions --int8 makes (relative-attention-bias Gathers, `wo` of gated models) and with a list of nodes to quantize
(`export.int4`'s first pass)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from export import dynamic_int8
from export.dynamic_int8 import quantize_graph
from export.exporter import default_keep_fp32
from export.layout import GRAPHS, data_name
from export.quantize import INT8_OPS, excluded_nodes
from tests.export.conftest import padded_batch


def _reference(source: Path, target: Path, **options) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(source, target, op_types_to_quantize=list(INT8_OPS), weight_type=QuantType.QInt8,
                     use_external_data_format=True, **options)


def _nodes(model: onnx.ModelProto) -> list[tuple]:
    return sorted((n.op_type, n.name, tuple(n.input), tuple(n.output),
                   tuple((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute))
                  for n in model.graph.node)


def _tensors(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t, base_dir=str(path.parent))
            for t in onnx.load(str(path), load_external_data=False).graph.initializer}


def _assert_same(ours: Path, theirs: Path) -> None:
    assert _nodes(onnx.load(str(ours), load_external_data=False)) == \
        _nodes(onnx.load(str(theirs), load_external_data=False))
    a, b = _tensors(ours), _tensors(theirs)
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].shape == b[name].shape, name
        assert np.array_equal(a[name], b[name]), name


@pytest.mark.parametrize("graph", GRAPHS)
def test_the_graph_quantize_dynamic_writes(exported, graph, tmp_path):
    source = exported.onnx_dir / graph
    exclude = excluded_nodes(source, default_keep_fp32(exported.model.config))
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    done = quantize_graph(source, tmp_path / "ours" / "q.onnx", INT8_OPS, exclude=exclude)
    _reference(source, tmp_path / "theirs" / "q.onnx", nodes_to_exclude=exclude or None)
    _assert_same(tmp_path / "ours" / "q.onnx", tmp_path / "theirs" / "q.onnx")
    assert done and not set(done) & set(exclude)
    # one data file, named as the folder names them, holding every tensor that is not a scalar
    model = onnx.load(str(tmp_path / "ours" / "q.onnx"), load_external_data=False)
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {data_name("q.onnx")}
    assert sorted(p.name for p in (tmp_path / "ours").iterdir()) == ["q.onnx", data_name("q.onnx")]


def test_only_the_listed_nodes(tied, tmp_path):
    source = tied.onnx_dir / GRAPHS[1]
    gathers = [n.name for n in onnx.load(str(source), load_external_data=False).graph.node
               if n.op_type == "Gather" and "embed_tokens" in n.name]
    assert gathers
    (tmp_path / "ours").mkdir()
    (tmp_path / "theirs").mkdir()
    assert quantize_graph(source, tmp_path / "ours" / "q.onnx", INT8_OPS, only=gathers) == gathers
    _reference(source, tmp_path / "theirs" / "q.onnx", nodes_to_quantize=gathers)
    _assert_same(tmp_path / "ours" / "q.onnx", tmp_path / "theirs" / "q.onnx")


def test_weights_read_a_block_at_a_time(tied, tmp_path, monkeypatch):
    """With blocks smaller than any weight, the bytes are those of one pass over the whole tensor, and onnxruntime
    computes with the graph what it computes with quantize_dynamic's."""
    source = tied.onnx_dir / GRAPHS[0]
    for name in ("whole", "blocks", "theirs"):
        (tmp_path / name).mkdir()
    quantize_graph(source, tmp_path / "whole" / "q.onnx")
    monkeypatch.setattr(dynamic_int8, "BLOCK_BYTES", 100)
    quantize_graph(source, tmp_path / "blocks" / "q.onnx")
    _assert_same(tmp_path / "blocks" / "q.onnx", tmp_path / "whole" / "q.onnx")
    _reference(source, tmp_path / "theirs" / "q.onnx")
    ids, mask = padded_batch([7, 4, 6])
    ours, theirs = (ort.InferenceSession(str(tmp_path / name / "q.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input_ids": ids, "attention_mask": mask})[0] for name in ("blocks", "theirs"))
    assert np.array_equal(ours, theirs)


def test_a_truncated_data_file_is_named(tied, tmp_path):
    import shutil

    source = tmp_path / "src" / GRAPHS[0]
    source.parent.mkdir()
    shutil.copy(tied.onnx_dir / GRAPHS[0], source)
    data = tied.onnx_dir / data_name(GRAPHS[0])
    (source.parent / data.name).write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    (tmp_path / "out").mkdir()
    with pytest.raises(ValueError, match="truncated"):
        quantize_graph(source, tmp_path / "out" / "q.onnx")
    assert not list((tmp_path / "out").iterdir())
