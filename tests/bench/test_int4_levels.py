"""`bench.int4_levels`: each graph of an export timed alone, the 4-bit one made at both accuracy levels."""

from __future__ import annotations

import onnx
import pytest

from bench import int4_levels
from bench.errors import BenchError
from export.exporter import export
from export.int4 import quantize_graph
from export.layout import DECODER_WITH_PAST


@pytest.fixture(scope="module")
def tiny_export(tiny_t5_dir, tmp_path_factory):
    return export(str(tiny_t5_dir), tmp_path_factory.mktemp("levels") / "onnx", int8=True)


@pytest.mark.parametrize("level", int4_levels.LEVELS)
def test_the_graph_is_made_at_the_accuracy_level_asked(tiny_export, tmp_path, level):
    quantize_graph(tiny_export / DECODER_WITH_PAST, tmp_path / "q4.onnx", accuracy_level=level)
    nodes = [n for n in onnx.load(str(tmp_path / "q4.onnx"), load_external_data=False).graph.node
             if n.op_type == "MatMulNBits"]
    assert nodes
    # an absent attribute is MatMulNBits' default, 0
    levels = {next((onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "accuracy_level"), 0)
              for n in nodes}
    assert levels == {level}


def test_every_graph_is_timed_at_every_batch(tiny_export):
    out = int4_levels.measure(tiny_export, batches=[1, 3], past=4, repeats=2, threads=1)
    assert set(out) == {"fp32", "int8", "int4-level0", "int4-level4"}
    assert all(set(times) == {1, 3} and min(times.values()) > 0 for times in out.values())


def test_a_folder_without_graphs_is_named_with_the_command_that_makes_them(tmp_path):
    with pytest.raises(BenchError, match="python -m export"):
        int4_levels.measure(tmp_path, batches=[1], past=4, repeats=1, threads=1)
