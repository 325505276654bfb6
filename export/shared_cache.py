"""`decoder_shared_cache_model.onnx`: the with-past graph with its self-attention cache kept in place, for greedy and
beam search; with --int8 also `decoder_shared_cache_one_row_quantized.onnx`, the one-row graph so rewritten.

The with-past graph takes each layer's self-attention keys and values so far and returns them one position longer:
onnxruntime's MultiHeadAttention copies the whole past into a new present at every step, and beam search then copies
the present once more, row by row, into the order of the beams that continue (`OnnxT5.take_rows`): the cache read
and written twice per layer and step, which this graph saves (0.80-0.90x the call's time at batch 8 and 32 x 4
beams on the default student and t5-small; docs/results.md, "Beam search with the cache appended in place"). Greedy
search copies it once per layer and step, which grows with the length decoded: on t5-base's one-row graph, 64 tokens
took 0.86x the time in place (docs/results.md, "Greedy search with the cache appended in place").

Here each self-attention is onnxruntime's DecoderMaskedMultiHeadAttention with `past_present_share_buffer`: the past and
the present are one buffer of some number of positions, which the runtime allocates (and doubles when full) and binds as
both, and the op writes the new position into it. Beams are not moved: input `cache_indirection` (batch, beams,
positions) says, for each beam and past position, which beam's row of its input holds that position's keys and values
(the mechanism onnxruntime's own BeamSearch op uses), and the runtime updates that small index when beams are picked
(`export.runtime.shared_cache`). The graph's other inputs are the with-past graph's, plus `past_sequence_length` (int32
[1]: the positions already in the buffer) and `beam_width` (int32 [1]); the position bias reads the past's length from
`past_sequence_length`, not from the buffer's shape. The weights stay in the with-past graph's data file.

The op's dot products and softmax are its own: the scores agree with MultiHeadAttention's to a few float32 ulps,
not bit for bit. The export keeps the fp32 graph only where greedy and beam search through it give the Python loop's
tokens on the validation batch (`shared_cache_agreement`); for the int8, 4-bit and one-row graphs, whose activations'
quantization turns an ulp into a rounding step now and then, it records how many tokens agree
(`one_row_shared_agreement` for the one-row graph, each validation row alone).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.layout import DECODER_WITH_PAST, ONE_ROW, ONE_ROW_SHARED, SHARED_CACHE, SHARED_CACHE_INPUTS, quantized_name
from export.position_table import PREFIX
from export.runtime import OnnxT5
from export.runtime.one_row import OneRow
from export.runtime.sessions import session_options
from export.runtime.shared_cache import SharedCache
from export.surgery import MS_DOMAIN, attribute, drop_stale_value_info, remove_dead_nodes
from export.trace import example_batch
from export.validate import Validation

CHECK_NEW_TOKENS = 16  # beam search tokens compared between the graph and the Python loop, per setting
CHECK_BEAMS = 4
PAST_LENGTH = PREFIX + "past"  # the position table's past length (a scalar), which the trace reads off the cache
CAPACITY = "cache_capacity"  # the buffers' positions, a dimension of the cache inputs and outputs


def _own_cache(name: str) -> bool:
    return name.startswith("past_key_values.") and ".decoder." in name


def _shared_attention(node: Any) -> Any:
    """The DecoderMaskedMultiHeadAttention node for a self-attention MultiHeadAttention with past: the same query,
    key, value, bias and past, and the shared-cache inputs."""
    from onnx import helper

    query, key, value, _, _, bias, past_key, past_value = node.input[:8]
    return helper.make_node("DecoderMaskedMultiHeadAttention",
                            [query, key, value, "", bias, past_key, past_value, *SHARED_CACHE_INPUTS],
                            list(node.output), name=node.name.replace("MultiHeadAttention", "SharedCacheAttention"),
                            domain=MS_DOMAIN, num_heads=attribute(node, "num_heads"),
                            scale=attribute(node, "scale", 0.0), past_present_share_buffer=1)


def write_shared_cache(folder: Path, kind: str | None) -> str:
    """Write the shared-cache graph of the `kind` (None: fp32, "int8", "int4") with-past graph in `folder`; its file
    name. ValueError where the graph does not have the form this rewrites (fused attention, the position table)."""
    name = quantized_name(SHARED_CACHE, kind) if kind else SHARED_CACHE
    shared_graph(folder / (quantized_name(DECODER_WITH_PAST, kind) if kind else DECODER_WITH_PAST), folder / name)
    return name


def write_one_row_shared(folder: Path) -> str:
    """Write ONE_ROW_SHARED from the one-row graph in `folder` (`export.one_row`); its file name."""
    shared_graph(folder / ONE_ROW, folder / ONE_ROW_SHARED)
    return ONE_ROW_SHARED


def shared_graph(source: Path, target: Path) -> None:
    """Write the with-past graph at `source` as a shared-cache graph at `target`, in the same folder (the weights stay
    in `source`'s data file). ValueError where the graph does not have the form this rewrites."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(source), load_external_data=False)
    graph = model.graph
    nodes: list[Any] = []
    attention = 0
    for node in graph.node:
        if node.op_type == "MultiHeadAttention" and len(node.input) >= 8 and _own_cache(node.input[6]):
            nodes.append(_shared_attention(node))
            attention += 1
        elif PAST_LENGTH in node.output:  # the past's length: from the input, the buffers' shape is their capacity
            nodes.append(helper.make_node("Cast", [SHARED_CACHE_INPUTS[0]], [PAST_LENGTH + "_1d"], name=PAST_LENGTH
                                          + "_1d", to=TensorProto.INT64))
            nodes.append(helper.make_node("Squeeze", [PAST_LENGTH + "_1d", PAST_LENGTH + "_axis"], [PAST_LENGTH],
                                          name=PAST_LENGTH))
            graph.initializer.append(numpy_helper.from_array(np.array([0], np.int64), PAST_LENGTH + "_axis"))
        else:
            nodes.append(node)
    layers = sum(1 for v in graph.input if _own_cache(v.name)) // 2
    if attention != layers or not any(PAST_LENGTH in n.output for n in nodes):
        raise ValueError(f"{source.name}: {attention} fused self-attentions with a past for {layers} layers, "
                         f"and {'a' if any(PAST_LENGTH in n.output for n in nodes) else 'no'} position table")
    del graph.node[:]
    graph.node.extend(nodes)
    remove_dead_nodes(graph)  # the Shape of the past that gave its length
    readers = [n.name for n in graph.node if n.op_type != "DecoderMaskedMultiHeadAttention"
               and any(_own_cache(i) for i in n.input)]
    if readers:  # a node reading the buffers' shape would see their capacity, not the past's length
        raise ValueError(f"{source.name}: {', '.join(readers)} read the self-attention past")
    for value in [*graph.input, *graph.output]:
        if _own_cache(value.name) or (value.name.startswith("present.") and ".decoder." in value.name):
            dim = value.type.tensor_type.shape.dim[2]
            dim.Clear()
            dim.dim_param = CAPACITY
    graph.input.extend([helper.make_tensor_value_info(SHARED_CACHE_INPUTS[0], TensorProto.INT32, [1]),
                        helper.make_tensor_value_info(SHARED_CACHE_INPUTS[1], TensorProto.INT32, [1]),
                        helper.make_tensor_value_info(SHARED_CACHE_INPUTS[2], TensorProto.INT32,
                                                      ["batch", "beams", CAPACITY])])
    drop_stale_value_info(graph)
    onnx.save(model, str(target))  # the weights stay in the source's data file, named by each tensor


def shared_cache_agreement(folder: Path, kind: str | None, name: str, check: Validation,
                           config: Any) -> dict[str, Any]:
    """Beam search (4 beams, two sequences returned) and greedy search on the validation batch through the
    shared-cache graph `name` against the Python loop on the with-past graph, EOS allowed and held off.
    {"tokens_compared", "agreement" (the share of equal tokens), "differ" (where whole outputs differ; empty when all
    are the same)}."""
    ex = example_batch(config, check.enc_lengths, 1, check.seed)
    ids, mask = ex["input_ids"], ex["attention_mask"]
    rt = OnnxT5.from_staged(folder, quantized=kind or False, search_graph=False, one_row_graph=False,
                            shared_cache=False)  # export_meta.json comes later
    shared = SharedCache(folder / name, session_options(), ["CPUExecutionProvider"], lambda session: None)
    equal = compared = 0
    differ = []
    for beams, least in [(beams, least) for beams in (CHECK_BEAMS, 1) for least in (0, CHECK_NEW_TOKENS)]:
        kwargs = {"max_new_tokens": CHECK_NEW_TOKENS, "min_new_tokens": least, "num_beams": beams,
                  "num_return_sequences": min(beams, 2), "do_sample": False}
        rt.shared = None
        loop = rt.generate(ids, mask, **kwargs)
        rt.shared = shared
        graph = rt.generate(ids, mask, **kwargs)
        if loop.shape != graph.shape or not np.array_equal(loop, graph):
            differ.append(f"num_beams={beams}, min_new_tokens={least}: tokens {graph.tolist()} against the loop's "
                          f"{loop.tolist()}")
        if loop.shape == graph.shape:
            equal += int(np.sum(loop == graph))
        compared += loop.size
    return {"tokens_compared": compared, "agreement": equal / compared, "differ": differ}


def one_row_shared_agreement(folder: Path, check: Validation, config: Any) -> dict[str, Any]:
    """Greedy tokens of each validation row alone stepped on ONE_ROW_SHARED against the one-row graph's, EOS held
    off; keys as `shared_cache_agreement`'s."""
    ex = example_batch(config, check.enc_lengths, 1, check.seed)
    rt = OnnxT5.from_staged(folder, quantized="int8", search_graph=False, shared_cache=False)
    plain = OneRow(folder / ONE_ROW, session_options(), ["CPUExecutionProvider"], lambda session: None)
    in_place = SharedCache(folder / ONE_ROW_SHARED, session_options(), ["CPUExecutionProvider"], lambda session: None)
    kwargs = {"max_new_tokens": CHECK_NEW_TOKENS, "min_new_tokens": CHECK_NEW_TOKENS, "num_beams": 1,
              "do_sample": False}
    outputs = []
    for one_row, one_row_shared in ((plain, None), (None, in_place)):  # whatever the decoder's size
        rt.one_row, rt.one_row_shared = one_row, one_row_shared
        outputs.append(np.concatenate([rt.generate(ex["input_ids"][i:i + 1], ex["attention_mask"][i:i + 1],
                                                   **kwargs) for i in range(len(check.enc_lengths))]))
    want, got = outputs
    differ = [f"row {i}: tokens {g.tolist()} against the one-row graph's {w.tolist()}"
              for i, (w, g) in enumerate(zip(want, got, strict=True)) if not np.array_equal(w, g)]
    return {"tokens_compared": int(want.size), "agreement": float(np.mean(want == got)), "differ": differ}
