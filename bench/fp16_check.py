"""fp16 export of t5-large-shaped weights: finite logits and the fp32 graphs' greedy tokens on the validation batch.

    python -m bench.fp16_check                        # t5-large shape (738M), random weights (T5's own init)
    python -m bench.fp16_check --shape t5-base --work /tmp/fp16-check

Exports the model with `python -m export --dtype fp16` (which checks the fp16 graphs against the fp32 ones and
records it in export_meta.json) and prints that record; exits 2 unless every greedy token equals fp32's. Needs about
12 GB of memory for t5-large; on the CPU provider the fp16 graphs run their unsupported fp16 ops in fp32, so only a
GPU (bench/gpu.sh) shows what fp16 arithmetic does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.errors import BenchError
from bench.shapes import T5_BASE, T5_LARGE
from distill.errors import cli_errors
from export.layout import META_FILE

PROG = "python -m bench.fp16_check"
SHAPES = {"t5-base": T5_BASE, "t5-large": T5_LARGE}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--shape", choices=list(SHAPES), default="t5-large")
    parser.add_argument("--work", type=Path, default=Path("bench/work/fp16-check"))
    args = parser.parse_args(argv)
    with cli_errors(PROG):
        import torch
        from transformers import T5Config, T5ForConditionalGeneration

        from export.exporter import export

        model = args.work / args.shape / "model"
        if not (model / "model.safetensors").is_file():
            torch.manual_seed(0)
            T5ForConditionalGeneration(T5Config(**SHAPES[args.shape])).save_pretrained(model)
        out = export(str(model), args.work / args.shape / "onnx", require_tokenizer=False, dtype="fp16")
        precision = json.loads((out / META_FILE).read_text())["precision"]
        print(json.dumps({"shape": args.shape, **{k: v for k, v in precision.items() if k != "graphs"}}))
        if precision["greedy_sequence_agreement"] != 1.0:
            raise BenchError(f"{args.shape}: fp16 greedy tokens differ from fp32's "
                             f"(token agreement {precision['greedy_token_agreement']:.3f}); see {out / META_FILE}.")


if __name__ == "__main__":
    main()
