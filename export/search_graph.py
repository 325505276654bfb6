"""`search_model.onnx`: the whole greedy search in one graph, onnxruntime's `BeamSearch` contrib op around this
export's own graphs.

`OnnxT5.generate` runs its search loop in Python: one session call per token, the logits back to numpy each time.
On a small model that loop is a fifth of a call (docs/results.md). Here the loop runs inside onnxruntime: the
com.microsoft `BeamSearch` op (model_type 1, T5) runs an encoder subgraph once and a decoder subgraph per token, with
its own top-k and bookkeeping in C++. Its subgraphs are the export's graphs, fused attention and all:

    encoder  decoder_cross_kv_model.onnx on encoder_hidden_states, an input of the search graph: the runtime runs
             the encoder on its own session (with its threads), the op's subgraph reads the states from outside
             -> present_key_cross_{i}, present_value_cross_{i}
    decoder  decoder_with_past_model.onnx, its inputs renamed and reordered as the op wants them, and its
             cross-attention's queries no longer grouped per input (`export.fuse_attention.ungroup`):
             input_ids (B, 1), encoder_attention_mask (int32), past_key_self_{i}, past_value_self_{i} (every layer),
             then past_key_cross_{i}, past_value_cross_{i} -> logits, present_key_self_{i}, present_value_self_{i}

The first step is the with-past graph on an empty past, as OnnxT5 serves it. The subgraphs' weights stay in the data
files of the graphs they come from (each tensor's external-data entry is kept as it is): the graph adds no weights
to the folder. The same for the int8 and 4-bit graphs (`search_model_quantized.onnx`, `search_model_q4.onnx`).

onnxruntime's `GreedySearch` op takes GPT models only; `BeamSearch` with one beam and early stopping is greedy search:
the first EOS on top ends the row, and until then the top candidate is the most likely token. Its scores are log
probabilities summed in float32, so two tokens whose logits differ by less than the sum's rounding could rank the
other way than numpy's argmax; the export keeps the graph only where its tokens are the loop's (`search_agreement`).
The op's decoder subgraph must say its input_ids are (B, 1): with any other second dimension it feeds the whole
sequence every step. The op writes a finished row without its EOS, then its pad id: that is -1 here (`NO_TOKEN`),
and the runtime puts the EOS back (`export.runtime.search`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from export.fuse_attention import ungroup
from export.layout import (
    CROSS_KV,
    DECODER_WITH_PAST,
    NO_TOKEN,
    SEARCH,
    SEARCH_HIDDEN,
    SEARCH_TOKENS_KEY,
    quantized_name,
)
from export.runtime import OnnxT5
from export.runtime.search import InGraphSearch
from export.runtime.sessions import session_options
from export.runtime.settings import resolve
from export.surgery import MS_DOMAIN, attribute, drop_stale_value_info, remove_dead_nodes, rename_value
from export.trace import example_batch
from export.validate import Validation

CHECK_NEW_TOKENS = 24  # greedy tokens compared between the search graph and the Python loop, per setting

# the main graph's inputs, in the op's input order (its vocab_mask and prefix_vocab_mask are left out)
INPUTS = ("input_ids", "max_length", "min_length", "num_beams", "num_return_sequences", "length_penalty",
          "repetition_penalty", "", "", "attention_mask")


def _int32_input(graph: Any, name: str) -> None:
    """Make the int64 input `name` an int32 input (the op feeds int32 ids and masks), cast back to int64 for the
    readers that need it: Shape, Gather's indices and a Cast to int32 (the attention's mask) read it as it comes."""
    from onnx import TensorProto, helper

    inside = name + "_int64"
    rename_value(graph, name, inside)
    value = next(v for v in graph.input if v.name == inside)
    value.name = name
    value.type.tensor_type.elem_type = TensorProto.INT32
    graph.node.insert(0, helper.make_node("Cast", [name], [inside], name=inside, to=TensorProto.INT64))
    casts = {node.output[0] for node in graph.node
             if node.op_type == "Cast" and node.input[0] == inside and attribute(node, "to") == TensorProto.INT32}
    for node in graph.node:
        if node.op_type == "Shape" and node.input[0] == inside:
            node.input[0] = name
        elif node.op_type == "Gather" and node.input[1] == inside:
            node.input[1] = name
        node.input[:] = [name if i in casts else i for i in node.input]


def _encoder(folder: Path, kind: str | None, layers: int) -> Any:
    """The op's encoder subgraph: the cross-attention K/V graph on the encoder states, which it reads from the outer
    graph's input `SEARCH_HIDDEN` (the op's own encoder inputs, which it must declare, go unread)."""
    import onnx
    from onnx import TensorProto, helper

    graph = onnx.load(str(folder / (quantized_name(CROSS_KV, kind) if kind else CROSS_KV)),
                      load_external_data=False).graph
    for i in range(layers):
        for kv in ("key", "value"):
            rename_value(graph, f"present.{i}.encoder.{kv}", f"present_{kv}_cross_{i}")
    hidden = [v for v in graph.input if v.name == SEARCH_HIDDEN]
    if len(graph.input) != 1 or not hidden:
        raise ValueError(f"{CROSS_KV}: inputs {[v.name for v in graph.input]}, not {SEARCH_HIDDEN} alone")
    del graph.input[:]  # SEARCH_HIDDEN now names the outer graph's input
    graph.input.extend(helper.make_tensor_value_info(name, TensorProto.INT32, ["batch", "length"])
                       for name in ("encoder_input_ids", "encoder_attention_mask"))
    graph.name = "encoder"
    return graph, hidden[0]


def _decoder(model: Any, layers: int) -> Any:
    """The op's decoder subgraph: the with-past graph under the op's names and input order, ungrouped
    (`export.fuse_attention.ungroup`: the op repeats the encoder K/V and mask for every beam)."""
    graph = model.graph
    for i in range(layers):
        for kv in ("key", "value"):
            rename_value(graph, f"past_key_values.{i}.decoder.{kv}", f"past_{kv}_self_{i}")
            rename_value(graph, f"past_key_values.{i}.encoder.{kv}", f"past_{kv}_cross_{i}")
            rename_value(graph, f"present.{i}.decoder.{kv}", f"present_{kv}_self_{i}")
    order = ["input_ids", "encoder_attention_mask",
             *(f"past_{kv}_self_{i}" for i in range(layers) for kv in ("key", "value")),
             *(f"past_{kv}_cross_{i}" for i in range(layers) for kv in ("key", "value"))]
    by_name = {v.name: v for v in graph.input}
    if sorted(by_name) != sorted(order):
        raise ValueError(f"{DECODER_WITH_PAST}: inputs {sorted(by_name)} are not the with-past graph's")
    inputs = [by_name[n] for n in order]
    del graph.input[:]
    graph.input.extend(inputs)
    tokens = graph.input[0].type.tensor_type.shape.dim[1]
    tokens.Clear()
    tokens.dim_value = 1  # one new token per step: see the module's docstring
    for name in ("input_ids", "encoder_attention_mask"):
        _int32_input(graph, name)
    ungroup(graph)
    remove_dead_nodes(graph)  # the casts and shape arithmetic no node reads any more
    drop_stale_value_info(graph)
    graph.name = "decoder"
    return graph


def write_search_graph(folder: Path, kind: str | None, start: int, eos: int) -> str:
    """Write the search graph of the `kind` (None: fp32, "int8", "int4") graphs in `folder`; its file name.

    `start`, `eos`: the decoder start and EOS token ids the op holds (attributes, and the graph's metadata, where the
    runtime reads them)."""
    import onnx
    from onnx import TensorProto, helper

    decoder = onnx.load(str(folder / (quantized_name(DECODER_WITH_PAST, kind) if kind else DECODER_WITH_PAST)),
                        load_external_data=False)
    layers = sum(1 for v in decoder.graph.input if v.name.startswith("past_key_values.")) // 4
    encoder, hidden = _encoder(folder, kind, layers)
    node = helper.make_node("BeamSearch", list(INPUTS), ["sequences"], name="search", domain=MS_DOMAIN,
                            model_type=1, decoder_start_token_id=start, eos_token_id=eos, pad_token_id=NO_TOKEN,
                            early_stopping=1, no_repeat_ngram_size=0,
                            encoder=encoder, decoder=_decoder(decoder, layers))
    ints = {"input_ids", "max_length", "min_length", "num_beams", "num_return_sequences", "attention_mask"}
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT32 if n in ints else TensorProto.FLOAT, None)
              for n in INPUTS if n] + [hidden]
    graph = helper.make_graph([node], "search", inputs,
                              [helper.make_tensor_value_info("sequences", TensorProto.INT32, None)])
    opsets = {o.domain: o.version for o in decoder.opset_import} | {MS_DOMAIN: 1}
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
    model.ir_version = decoder.ir_version
    helper.set_model_props(model, {p.key: p.value for p in decoder.metadata_props}
                           | {SEARCH_TOKENS_KEY: f"{start},{eos}"})
    name = quantized_name(SEARCH, kind) if kind else SEARCH
    onnx.save(model, str(folder / name))  # the weights stay in the parts' data files, named by each tensor
    return name


def token_ids(config: Any) -> tuple[int, int] | str:
    """(start, eos) for the op, or why the model's ids do not fit it (one EOS id)."""
    start, eos = config.decoder_start_token_id, config.eos_token_id
    if isinstance(eos, list | tuple):
        eos = eos[0] if len(eos) == 1 else None
    if start is None or eos is None:
        return (f"the op holds one decoder start and one EOS id; the model has decoder_start_token_id {start}, "
                f"eos_token_id {config.eos_token_id}")
    return int(start), int(eos)


def search_agreement(folder: Path, kind: str | None, name: str, check: Validation, config: Any) -> list[str]:
    """Where the search graph `name`'s tokens differ from the Python loop's on each row of the validation batch alone
    (padding included): greedy as it comes (rows that end early included) and with EOS held off; empty when they are
    the same. The graph is checked whatever the decoder's size (the runtime may leave a large one unused)."""
    ex = example_batch(config, check.enc_lengths, 1, check.seed)
    # the loop on the graphs the search graph holds: the int8 with-past graph, not the one-row graph a large int8
    # decoder's one-row calls step on (`export.one_row`); export_meta.json comes later
    rt = OnnxT5.from_staged(folder, quantized=kind or False, search_graph=False, one_row_graph=False)
    search = InGraphSearch(folder / name, session_options(1), ["CPUExecutionProvider"], lambda session: None)
    differ = []
    for least in (0, CHECK_NEW_TOKENS):
        kwargs = {"max_new_tokens": CHECK_NEW_TOKENS, "min_new_tokens": least, "num_beams": 1, "do_sample": False}
        s = resolve(rt.settings, kwargs, rt.vocab_size)
        if not search.serves(s):
            return [f"{name} does not serve greedy calls with the model's token ids"]
        for row in range(ex["input_ids"].shape[0]):
            ids, mask = ex["input_ids"][row:row + 1], ex["attention_mask"][row:row + 1]
            loop = rt.generate(ids, mask, **kwargs)
            graph = search.generate(ids, mask, rt.encode(ids, mask), s)
            if loop.shape != graph.shape or not np.array_equal(loop, graph):
                differ.append(f"row {row}, min_new_tokens={least}: tokens {graph.tolist()} against the loop's "
                              f"{loop.tolist()}")
    return differ
