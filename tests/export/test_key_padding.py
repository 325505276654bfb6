"""`export.key_padding`: a mask is key padding only when a probe run shows it, and the encoder's attentions read the
padding as key_padding_mask and a position bias of one row, not a (rows, heads, length, length) tensor."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.key_padding import key_padding_source
from export.static_shapes import inferred_shapes


def _mask_graph(causal: bool) -> onnx.ModelProto:
    """A (rows, 1, 1 or length, length) boolean mask of input `attention_mask`, causal or not; `ids` beside it (its
    shape read only)."""
    const = lambda name, values: helper.make_node(  # noqa: E731
        "Constant", [], [name], value=numpy_helper.from_array(np.asarray(values, dtype=np.int64)))
    nodes = [helper.make_node("Cast", ["attention_mask"], ["kept"], to=TensorProto.BOOL),
             const("axes", [1, 2]), helper.make_node("Unsqueeze", ["kept", "axes"], ["padding"])]
    if causal:  # position j kept for query i when j <= i, read from `ids`' length
        nodes += [helper.make_node("Shape", ["ids"], ["shape"]), const("one", 1), const("zero", 0),
                  helper.make_node("Gather", ["shape", "one"], ["length"]),
                  helper.make_node("Range", ["zero", "length", "one"], ["positions"]),
                  const("rows_axes", [1]), const("cols_axes", [0]),
                  helper.make_node("Unsqueeze", ["positions", "rows_axes"], ["rows"]),
                  helper.make_node("Unsqueeze", ["positions", "cols_axes"], ["cols"]),
                  helper.make_node("LessOrEqual", ["cols", "rows"], ["causal"]),
                  helper.make_node("And", ["padding", "causal"], ["mask"])]
    else:
        nodes.append(helper.make_node("Identity", ["padding"], ["mask"]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "length"])
              for n in ("ids", "attention_mask")]
    graph = helper.make_graph(nodes, "mask", inputs, [helper.make_tensor_value_info("mask", TensorProto.BOOL, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("causal", [False, True])
def test_only_a_mask_the_same_for_every_query_is_key_padding(causal):
    """Both masks read the values of `attention_mask` alone (the causal part only its shape), so the graph's
    structure cannot tell them apart: the probe does."""
    model = _mask_graph(causal)
    producer = {out: node for node in model.graph.node for out in node.output}
    found = key_padding_source(model, producer, inferred_shapes(model), "mask", {"attention_mask"})
    assert found == (None if causal else "attention_mask")
    assert key_padding_source(model, producer, inferred_shapes(model), "mask", {"attention_mask", "ids"}) is None


def test_the_encoder_reads_key_padding_and_one_row_of_position_bias(exported):
    """In the validated export (padded rows; fp32 outputs equal PyTorch's within tolerance): each encoder attention
    reads the mask input as key_padding_mask and a position bias of batch dim 1; the first step's cross-attentions
    read the mask and no bias (T5's is zeros); no Where of the scores' size is left."""
    from export.static_shapes import inferred_shapes as shapes_of

    for name, attention in (("encoder_model.onnx", "SelfAttention"), ("decoder_model.onnx", "EncDecAttention")):
        model = onnx.load(str(exported.onnx_dir / name), load_external_data=False)
        shapes = shapes_of(model)
        producer = {out: node for node in model.graph.node for out in node.output}
        fused = [n for n in model.graph.node if n.op_type == "MultiHeadAttention" and attention in n.name]
        assert fused, name
        for node in fused:
            mask = producer[node.input[4]]
            assert mask.op_type == "Cast" and mask.input[0] in ("attention_mask", "encoder_attention_mask"), name
            bias = node.input[5] if len(node.input) > 5 else ""
            if attention == "EncDecAttention":
                assert bias == "", name
            else:
                assert shapes[bias][0] == 1, name
        assert not [n for n in model.graph.node if n.op_type == "Where" and len(shapes.get(n.output[0]) or []) == 4
                    and shapes[n.output[0]][0] != 1], name
