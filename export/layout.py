"""What an export folder holds and how it names its source: the file names both the exporter and the runtime use.

Standard library only, so that the runtime can read it without the exporter's torch and transformers.
"""

from __future__ import annotations

from pathlib import Path

# optimum's file names, so that `ORTModelForSeq2SeqLM` and transformers.js load the folder as it is
ENCODER, DECODER, DECODER_WITH_PAST = "encoder_model.onnx", "decoder_model.onnx", "decoder_with_past_model.onnx"
GRAPHS = (ENCODER, DECODER, DECODER_WITH_PAST)
# both decoders as the branches of one `If`, each weight once (`export.merge`); optimum's and transformers.js's name
DECODER_MERGED = "decoder_model_merged.onnx"
USE_CACHE_BRANCH = "use_cache_branch"  # its bool input of shape [1]: False the first step, True a step on the cache
# the first step's cross-attention K/V computed from encoder_hidden_states alone (`export.cross_kv`): with it, the
# with-past graph serves the first step too (a past of length 0), so OnnxT5 holds each decoder weight in one
# session and one graph, whose fused kernels it keeps (neither holds for the merged graph's branches)
CROSS_KV = "decoder_cross_kv_model.onnx"
# with --int8: the with-past graph again, its MatMul weights as 8-bit blocks (MatMulNBits) instead of one int8 scale
# per tensor, for OnnxT5's one-row steps, where onnxruntime's block kernel reads int8 weights faster than its
# DynamicQuantizeMatMul does (`export.one_row`)
ONE_ROW = "decoder_with_past_one_row_quantized.onnx"
# the with-past graph with its self-attention cache kept in place (`export.shared_cache`): greedy and beam search append
# each step's keys and values to buffers they allocate, and beams are reordered through an index, not by copies;
# the weights stay in the with-past graph's data file
SHARED_CACHE = "decoder_shared_cache_model.onnx"
SHARED_CACHE_INPUTS = ("past_sequence_length", "beam_width", "cache_indirection")  # what it takes besides the cache
# with --int8: the one-row graph rewritten the same way, for one-row calls; its weights are the one-row graph's file
ONE_ROW_SHARED = "decoder_shared_cache_one_row_quantized.onnx"
# one row's greedy decoding loop in one graph: onnxruntime's BeamSearch op around the cross-attention K/V and
# with-past graphs (`export.search_graph`); the weights stay in those graphs' data files
SEARCH = "search_model.onnx"
SEARCH_HIDDEN = "encoder_hidden_states"  # its input of the encoder's states, which the runtime computes beforehand
SEARCH_TOKENS_KEY = "t5fast.search_tokens"  # its metadata: "start,eos", the token ids the op holds
# its op's pad id: the op fills a row after its end with it and leaves the row's EOS out (it keeps hypotheses without
# it, as transformers' beam scorer does), so the end must be told apart from a real token: no token is -1
NO_TOKEN = -1
META_FILE = "export_meta.json"  # written last: a folder without it is not an export
# export_meta.json keys the runtime checks a folder against:
FILES_KEY = "files"  # {file name: {"bytes": int, "sha256": str}} of every other file the export wrote
MODEL_KEY = "model"  # the model's shape: num_layers, num_decoder_layers, num_heads, d_kv, d_model, vocab_size, ...
EXPORT_ID_KEY = "export_id"  # a random id shared by export_meta.json and every graph of one export
GRAPH_EXPORT_ID = "t5fast.export_id"
# sha256 of the encoder's weights and settings: two exports with the same one compute the same encoder states, so an
# assistant (`OnnxT5.generate(assistant=...)`) reuses its model's instead of running its own encoder
ENCODER_DIGEST_KEY = "encoder_sha256"  # where each graph carries it: its ONNX metadata_props (read at no cost)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "spiece.model", "sentencepiece.bpe.model")


DTYPES = ("fp32", "fp16", "bf16")  # `python -m export --dtype`: fp32 graphs are always written, the others beside them


def dtype_name(graph: str, dtype: str) -> str:
    """The file name of a graph in `dtype` (`encoder_model.onnx` -> `encoder_model_fp16.onnx`; fp32: unchanged)."""
    return graph if dtype == "fp32" else graph.replace(".onnx", f"_{dtype}.onnx")


# `python -m export --int8` / `--int4`, `OnnxT5.from_pretrained(quantized=...)`: each kind's file suffix, the names
# transformers.js loads for its dtype "q8" and "q4"
QUANTIZED = {"int8": "_quantized", "int4": "_q4"}


def quantized_name(graph: str, kind: str = "int8") -> str:
    """The file name of a graph's quantized version: int8 `encoder_model.onnx` -> `encoder_model_quantized.onnx`,
    int4 -> `encoder_model_q4.onnx`."""
    return graph.replace(".onnx", f"{QUANTIZED[kind]}.onnx")


def data_name(graph: str) -> str:
    """The external data file of a graph too large for one file (`export.external`): `decoder_model.onnx` ->
    `decoder_model.onnx_data`, optimum's name."""
    return f"{graph}_data"


def graph_files(folder: Path, graph: str) -> list[str]:
    """The files a graph occupies in `folder`: the graph, and its external data file when it has one."""
    data = data_name(graph)
    return [graph, data] if (folder / data).is_file() else [graph]


def source_id(name_or_dir: str | Path) -> str:
    """How an export records its source: the resolved path of a local folder, else the hub id as given."""
    local = Path(name_or_dir).expanduser()
    return str(local.resolve()) if local.is_dir() else str(name_or_dir)


def source_fingerprint(name_or_dir: str | Path) -> dict[str, list[int]] | None:
    """Size and modification time of a local folder's weight and config files (None for a hub id)."""
    local = Path(name_or_dir).expanduser()
    if not local.is_dir():
        return None
    return {p.name: [p.stat().st_size, p.stat().st_mtime_ns] for p in sorted(local.iterdir())
            if p.suffix in (".safetensors", ".json") and p.is_file()}
