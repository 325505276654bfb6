"""Pseudo-labels made by OnnxT5 instead of transformers: the same beam-search tokens, faster (docs/recipes.md).

    python -m export.labels --teacher models/teacher --data data/bible --out data/pseudo/teacher-beam4 \\
        --labels models/teacher/pseudo-labels-beam4.jsonl.gz --onnx runs/export/teacher

Every option of `python -m distill.pseudo` means the same here (the labels file, `--mix-gold`, resuming an
interrupted run); `--onnx` is where the teacher's fp32 export lives, made there first when it is missing or stale
(`load_or_export`). OnnxT5 fp32 decodes transformers' greedy and beam tokens (the runtime's tests hold it to that,
token for token), so labels made either way are interchangeable: a labels file or a partial run made by one is
reused by the other. The teacher is exported only when a label is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from distill.errors import cli_errors
from distill.generation import Generate
from distill.pseudo import Engine, arguments, run
from export.exporter import load_or_export

DEFAULT_ONNX = Path("runs/export/teacher")


def onnx_engine(onnx: Path) -> Engine:
    """An engine for `distill.pseudo.make_pseudo_labels`: the teacher's fp32 export in `onnx`, decoded by OnnxT5."""
    def start(teacher: str, num_beams: int, max_new_tokens: int) -> Generate:
        model = load_or_export(teacher, onnx)

        def generate(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            return model.generate(ids, mask, num_beams=num_beams, max_new_tokens=max_new_tokens, do_sample=False)

        return generate

    return start


def main(argv: list[str] | None = None) -> None:
    parser: argparse.ArgumentParser = arguments(__doc__)
    parser.add_argument("--onnx", type=Path, default=DEFAULT_ONNX,
                        help=f"the teacher's export folder, made when missing or stale (default {DEFAULT_ONNX})")
    args = parser.parse_args(argv)
    with cli_errors("python -m export.labels"):
        out = run(args, onnx_engine(args.onnx))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
