"""Memory and disk an export will need, predicted from the model's sizes before any work, and refused when short.

A t5-3b export needs tens of GB of memory and disk: finding out after twenty minutes of tracing, from the kernel's
OOM killer or a full disk, is what this avoids. The prediction follows what `export` holds at its peak (see
docs/architecture.md, "Export memory"), one stage at a time: the torch weights while the graphs are traced and
PyTorch's reference outputs computed (`TORCH_SHARE` of them); then, those freed, one onnxruntime session at a time
for the validation (`SESSION_SHARE` of the largest graph's weights); the int8 graphs, written a weight at a time
(`export.dynamic_int8`); the int8 check's OnnxT5 (the fp32 weights served once, `TORCH_SHARE` covers it); for the
one-row int8 graph (`export.one_row`) and --int4, `NBITS_COPIES` of the graph the block quantizer loads.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distill.sizes import weight_counts
from export.errors import ExportError
from export.one_row import BLOCK_SIZE as ONE_ROW_BLOCK_SIZE

# the torch weights with the trace's and the reference outputs' activations (t5-3b: 2.0 GB over its 11.4 GB of
# weights, the baseline included), or OnnxT5 serving the fp32 graphs (1.02-1.07x): measured with `python -m bench.sizes`
TORCH_SHARE = 1.15
# an onnxruntime session while it loads a graph: the pages of the mapped data file it reads and the MatMul weights it
# prepacks (measured: 1.5 GB over the torch weights for mt5-small's 1.1 GB first-step decoder)
SESSION_SHARE = 1.5
# MatMulNBitsQuantizer holds the fp32 graph it loaded, the 4-bit weights beside it until the end, and one weight at a
# time as numpy: measured 1.43x on a 200 MB graph of MatMul weights
NBITS_COPIES = 1.5
BASELINE_BYTES = 1 << 30  # python, torch, onnxruntime and the activations of the validation batch
GB = 1e9


@dataclass(frozen=True)
class Needs:
    memory: int  # peak resident bytes
    disk: int  # bytes the finished folder holds (the merged decoders included), plus the largest graph once more
    weights: int  # fp32 bytes of the model's weights

    def describe(self) -> str:
        return (f"{self.weights / GB:.1f} GB of fp32 weights: about {self.memory / GB:.1f} GB of memory at the peak "
                f"and {self.disk / GB:.1f} GB of disk")


def graph_bytes(fields: dict[str, Any]) -> dict[str, int]:
    """fp32 bytes of each graph's weights. Each decoder graph holds the embedding, the decoder's layers and the
    output matrix (a transposed copy of the embedding when tied); the encoder its layers and the embedding."""
    c = weight_counts(fields)
    head = c.head or c.embedding
    return {"encoder": 4 * (c.embedding + c.encoder), "decoder": 4 * (c.embedding + c.decoder + head),
            "decoder_with_past": 4 * (c.embedding + c.decoder + head)}


def q4_bytes_per_weight(block_size: int) -> float:
    """Bytes per weight of a 4-bit MatMul (`export.int4`): half a byte, and per block an fp32 scale and a 4-bit zero
    point."""
    return 0.5 + 4.5 / block_size


def q8_bytes_per_weight() -> float:
    """Bytes per weight of the one-row graph's 8-bit MatMuls (`export.one_row`): a byte, and per block an fp32
    scale."""
    return 1 + 4 / ONE_ROW_BLOCK_SIZE


def predict(fields: dict[str, Any], int8: bool, keep_fp32: tuple[str, ...], int4: bool = False,
            int4_keep: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()), block_size: int = 32) -> Needs:
    """What exporting a model of config `fields` needs (fp32 graphs, the int8 ones with `int8`, the 4-bit ones with
    `int4`, whose `int4_keep` modules stay (fp32, int8))."""
    weights = 4 * weight_counts(fields).total
    graphs = graph_bytes(fields)
    largest = max(graphs.values())
    memory = int(max(TORCH_SHARE * weights, SESSION_SHARE * largest))
    disk = sum(graphs.values()) + graphs["decoder"] + largest  # the merged decoder holds the decoder's weights once
    embedding = weight_counts(fields).embedding / _decoder_graph(fields)  # the share the block graphs keep int8
    if int8:
        kept = _kept_fraction(fields, keep_fp32)
        int8_bytes = {name: int(size * (kept + (1 - kept) / 4)) for name, size in graphs.items()}
        disk += sum(int8_bytes.values()) + int8_bytes["decoder"]
        # the one-row graph: the with-past graph's weights as 8-bit blocks (`export.one_row`)
        rest = max(0.0, 1 - kept - embedding)
        disk += int(graphs["decoder_with_past"] * (kept + embedding / 4 + rest * q8_bytes_per_weight() / 4))
        memory = max(memory, int(NBITS_COPIES * largest * (1 - 0.75 * embedding)))
    if int4:
        # shares of the decoder graph's weights (the largest graph): kept fp32, int8 (the embedding, keep_int8), 4-bit
        fp32 = _kept_fraction(fields, int4_keep[0])
        int8_share = _kept_fraction(fields, int4_keep[1]) + embedding
        rest = max(0.0, 1 - fp32 - int8_share)
        q4_bytes = {name: int(size * (fp32 + int8_share / 4 + rest * q4_bytes_per_weight(block_size) / 4))
                    for name, size in graphs.items()}
        between = int(largest * (1 - 0.75 * int8_share))  # after the int8 pass, before the 4-bit one
        memory = max(memory, int(NBITS_COPIES * between))
        # its work file (`between`) is smaller than the largest graph that `disk` counts once more
        disk += sum(q4_bytes.values()) + q4_bytes["decoder"]
    return Needs(memory + BASELINE_BYTES, disk, weights)


def _kept(fields: dict[str, Any], keep_fp32: tuple[str, ...], stacks: tuple[str, ...]) -> int:
    """Parameters `keep_fp32` keeps fp32 in `stacks` ("encoder", "decoder"): each layer's `wo`, and the decoder's
    output matrix for `lm_head`."""
    layers = {"encoder": fields["num_layers"], "decoder": fields.get("num_decoder_layers") or fields["num_layers"]}
    kept = sum(layers[s] for s in stacks) * fields["d_ff"] * fields["d_model"] if "wo" in keep_fp32 else 0
    if "lm_head" in keep_fp32 and "decoder" in stacks:
        c = weight_counts(fields)
        kept += c.head or c.embedding
    return kept


def _kept_fraction(fields: dict[str, Any], keep_fp32: tuple[str, ...]) -> float:
    """The share of the decoder graph's weights that stay fp32 with `keep_fp32`."""
    return _kept(fields, keep_fp32, ("decoder",)) / _decoder_graph(fields)


def _decoder_graph(fields: dict[str, Any]) -> int:
    """Parameters a decoder graph holds: the embedding, the decoder's layers and the output matrix."""
    c = weight_counts(fields)
    return c.embedding + c.decoder + (c.head or c.embedding)


def int8_weight_bytes(fields: dict[str, Any], keep_fp32: tuple[str, ...]) -> int:
    """Bytes of the weights the int8 graphs serve: 1 per quantized weight, 4 per weight kept fp32."""
    return weight_counts(fields).total + 3 * _kept(fields, keep_fp32, ("encoder", "decoder"))


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none: the check is then skipped)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def require(needs: Needs, out: Path) -> None:
    """ExportError, before any work, when this machine lacks the memory or `out`'s file system the disk."""
    problems = []
    memory = available_memory()
    if memory is not None and needs.memory > memory:
        problems.append(f"{memory / GB:.1f} GB of memory is available")
    parent = next((p for p in (out, *out.parents) if p.exists()), Path(os.sep))
    free = shutil.disk_usage(parent).free
    if needs.disk > free:
        problems.append(f"{parent} has {free / GB:.1f} GB free")
    if problems:
        raise ExportError(f"This export needs {needs.describe()}, but {' and '.join(problems)}. Free some, use a "
                          "machine with more, or export fp32 alone first (without --int8) to need less; "
                          "--no-resource-check skips this estimate.")
