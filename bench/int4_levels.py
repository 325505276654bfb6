"""Which MatMulNBits accuracy level the 4-bit graphs should use: one decoder-with-past call at fp32, int8 and 4-bit
with accuracy level 0 and 4, side by side on the same export.

    python -m bench.int4_levels --onnx runs/export/student --batches 1,8 --past 16 --repeats 300

For each export folder (`python -m export --int8`), the fp32 and int8 decoder-with-past graphs are timed as they are,
and the 4-bit graph is made twice from the fp32 one in a temporary folder (`export.int4.quantize_graph`, the
exporter's block size and kept modules, accuracy level 0 and 4). Each call is timed alone, without a generate loop
around it (`bench.decoder_step`): median milliseconds over `--repeats` calls, after one warm-up call. `export.int4`'s
`ACCURACY_LEVEL` is the level this benchmark found faster. Run it with nothing else busy on the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from bench.decoder_step import step_ms
from bench.errors import BenchError
from distill.errors import cli_errors
from export.int4 import quantize_graph
from export.layout import DECODER_WITH_PAST, quantized_name

LEVELS = (0, 4)  # MatMulNBits: 0 dequantizes the weights to fp32, 4 quantizes the activations to int8 per block


def session(path: Path, threads: int) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def kept_fp32(folder: Path) -> tuple[str, ...]:
    """The modules the exporter keeps fp32 in this folder's quantized graphs (`wo` of gated-GELU models)."""
    meta = json.loads((folder / "export_meta.json").read_text())
    return tuple((meta.get("int8") or {}).get("keep_fp32") or ())


def measure(folder: Path, batches: list[int], past: int, repeats: int, threads: int) -> dict[str, dict[int, float]]:
    """Milliseconds per decoder-with-past call, by graph ("fp32", "int8", "int4-level0", ...) and batch."""
    fp32 = folder / DECODER_WITH_PAST
    if not fp32.is_file():
        raise BenchError(f"{folder}: no {DECODER_WITH_PAST}; export the model first (python -m export --model M "
                         f"--out {folder} --int8).")
    with tempfile.TemporaryDirectory(prefix="int4-levels.") as tmp:
        graphs = {"fp32": fp32, "int8": folder / quantized_name(DECODER_WITH_PAST, "int8")}
        for level in LEVELS:
            target = Path(tmp) / f"level{level}" / quantized_name(DECODER_WITH_PAST, "int4")
            target.parent.mkdir()
            print(f"{folder.name}: 4-bit decoder with past at accuracy level {level} ...", flush=True)
            quantize_graph(fp32, target, keep_fp32=kept_fp32(folder), accuracy_level=level)
            graphs[f"int4-level{level}"] = target
        out: dict[str, dict[int, float]] = {}
        for name, path in graphs.items():
            if not path.is_file():
                continue  # an export without --int8
            graph = session(path, threads)
            out[name] = {batch: step_ms(graph, batch, past, repeats) for batch in batches}
            del graph
            print(f"{folder.name} {name:<12}" + "".join(f"  batch {b}: {ms:7.3f} ms" for b, ms in out[name].items()),
                  flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.int4_levels", description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--onnx", type=Path, action="append", required=True,
                        help="an export folder (python -m export --int8); repeat for several")
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default %(default)s)")
    parser.add_argument("--past", type=int, default=16, help="cached decoder positions (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=300, help="timed calls per cell (default %(default)s)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)
    with cli_errors(parser.prog):
        batches = [int(b) for b in args.batches.split(",")]
        results = {str(folder): measure(folder, batches, args.past, args.repeats, args.threads)
                   for folder in args.onnx}
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({"past": args.past, "repeats": args.repeats, "threads": args.threads,
                                             "ms": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
