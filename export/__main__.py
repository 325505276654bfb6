"""Export a T5-family model (folder or hub id) to ONNX with a key/value cache; see export/exporter.py for the layout.

    python -m export --model models/teacher --out runs/export/teacher
    python -m export --model runs/distill/student --out runs/export/student --int8 --int8-keep-fp32 lm_head,wo
    python -m export --model models/teacher --out runs/export/teacher --dtype fp16   # + *_fp16.onnx, for GPUs
    python -m export --model models/teacher --out runs/export/teacher --int8 --int4   # + *_q4.onnx, 4-bit weights

The graphs are checked against PyTorch before the folder appears; `export_meta.json` records the differences.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from distill.errors import cli_errors
from export.exporter import export
from export.int4 import BLOCK_SIZES, DEFAULT_BLOCK_SIZE
from export.layout import DTYPES, META_FILE
from export.trace import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from export.validate import ATOL, RTOL, Validation

PROG = "python -m export"


def _tolerance(text: str) -> float:
    """argparse type of --atol / --rtol: a finite number >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _module_names(parser: argparse.ArgumentParser, option: str, text: str, example: str) -> tuple[str, ...]:
    """A comma-separated list of module names ('none': the empty list); parser.error when it names none."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        parser.error(f"{option} names no module; give e.g. {example}, or 'none' to quantize every MatMul")
    return () if names == ("none",) else names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--model", required=True, help="T5-family save_pretrained folder or hub id (safetensors)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced only by a valid export)")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset (default %(default)s)")
    parser.add_argument("--int8", action="store_true",
                        help="also write *_quantized.onnx (dynamic int8 MatMuls and embeddings) and the one-row int8 "
                             "graph (8-bit blocks, for one-row calls)")
    parser.add_argument("--int8-keep-fp32", default=None, metavar="NAMES",
                        help="comma-separated module names whose MatMuls stay fp32 with --int8, e.g. lm_head,wo; "
                             "'none' for none (default: wo for gated-GELU models: T5 v1.1, flan-t5, mT5)")
    parser.add_argument("--int4", action="store_true",
                        help="also write *_q4.onnx: 4-bit block-wise MatMul weights (onnxruntime's MatMulNBits), "
                             "int8 embeddings")
    parser.add_argument("--int4-block-size", type=int, choices=BLOCK_SIZES, default=DEFAULT_BLOCK_SIZE,
                        help="weights per 4-bit block, each with its own scale and zero point (default %(default)s)")
    parser.add_argument("--int4-keep-fp32", default=None, metavar="NAMES",
                        help="comma-separated module names whose MatMuls stay fp32 with --int4; 'none' for none "
                             "(default: wo for gated-GELU models, as --int8)")
    parser.add_argument("--int4-keep-int8", default=None, metavar="NAMES",
                        help="comma-separated module names whose MatMuls are int8 instead of 4-bit with --int4, "
                             "e.g. lm_head (default: none)")
    parser.add_argument("--plain-attention", action="store_true",
                        help="keep each attention as the traced standard ONNX ops instead of onnxruntime's "
                             "MultiHeadAttention (com.microsoft), for runtimes without onnxruntime's contrib ops")
    parser.add_argument("--no-resource-check", action="store_true",
                        help="skip the up-front estimate of the memory and disk the export needs")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32",
                        help="also write the graphs in fp16 or bf16 (*_fp16.onnx), wo and T5's overflow-prone ops "
                             "kept in fp32; checked against the fp32 graphs (bf16 needs onnxruntime-gpu)")
    parser.add_argument("--atol", type=_tolerance, default=ATOL,
                        help="absolute part of each output's tolerance against PyTorch (default %(default)s)")
    parser.add_argument("--rtol", type=_tolerance, default=RTOL,
                        help="relative part: the tolerance is atol + rtol * max |PyTorch output| (default %(default)s)")
    parser.add_argument("--tokenizer", default=None, metavar="DIR_OR_ID",
                        help="where the tokenizer comes from (default: the model's folder or hub id)")
    parser.add_argument("--no-tokenizer", action="store_true",
                        help="export the graphs without a tokenizer (e.g. random weights for a benchmark)")
    args = parser.parse_args(argv)
    if args.tokenizer and args.no_tokenizer:
        parser.error("--tokenizer and --no-tokenizer exclude each other")
    for option, needs, example in (("--int8-keep-fp32", "int8", "lm_head,wo"), ("--int4-keep-fp32", "int4", "wo"),
                                   ("--int4-keep-int8", "int4", "lm_head")):
        dest = option[2:].replace("-", "_")
        if getattr(args, dest) is not None:
            if not getattr(args, needs):
                parser.error(f"{option} needs --{needs}")
            setattr(args, dest, _module_names(parser, option, getattr(args, dest), example))
    if args.int4_block_size != DEFAULT_BLOCK_SIZE and not args.int4:
        parser.error("--int4-block-size needs --int4")
    if args.opset < MIN_OPSET:
        parser.error(f"--opset {args.opset}: T5's causal mask needs opset {MIN_OPSET} or newer (aten::triu)")
    if args.opset > MAX_OPSET:
        parser.error(f"--opset {args.opset}: torch's TorchScript exporter writes opsets {MIN_OPSET} to {MAX_OPSET}; "
                     f"choose one of those (default {DEFAULT_OPSET})")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with cli_errors(PROG):
        check = Validation(atol=args.atol, rtol=args.rtol)
        out = export(args.model, args.out, opset=args.opset, int8=args.int8, int8_keep_fp32=args.int8_keep_fp32,
                     check=check, command=" ".join([PROG, *(argv or sys.argv[1:])]), tokenizer=args.tokenizer,
                     require_tokenizer=not args.no_tokenizer, check_resources=not args.no_resource_check,
                     dtype=args.dtype, int4=args.int4, int4_block_size=args.int4_block_size,
                     int4_keep_fp32=args.int4_keep_fp32, int4_keep_int8=args.int4_keep_int8 or (),
                     fused_attention=not args.plain_attention)
    print(f"wrote {out} (graphs validated against PyTorch; see {out / META_FILE})")


if __name__ == "__main__":
    main()
