"""`python -m distill.student` at real sizes: seconds and peak memory of shrinking random-weight teachers of the
published flan-t5-large and mt5-base shapes (untied lm_head, gated-gelu). Nothing is downloaded.

    python -m bench.student_shapes --shapes flan-t5-large --decoder-layers 6 3

Each teacher is built once into a temporary folder (its fp32 weights on disk: flan-t5-large 3.1 GB, mt5-base 2.3 GB),
then each student is made by a child process whose peak RSS is read back: one JSON line per student, with the ratio
of that peak to the teacher's weight bytes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from distill.errors import at_least_one

# published sizes (the models' config.json on the hub)
SHAPES = {
    "flan-t5-large": {"d_model": 1024, "d_ff": 2816, "d_kv": 64, "num_heads": 16, "num_layers": 24,
                      "num_decoder_layers": 24, "vocab_size": 32128},
    "mt5-base": {"d_model": 768, "d_ff": 2048, "d_kv": 64, "num_heads": 12, "num_layers": 12,
                 "num_decoder_layers": 12, "vocab_size": 250112},
}


def build_teacher(shape: str, out: Path) -> int:
    """A random untied gated-gelu teacher of `shape` saved to `out`; returns its weight bytes."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1, **SHAPES[shape])
    with torch.device("meta"):
        model = T5ForConditionalGeneration(config)
    model.lm_head.weight = torch.nn.Parameter(torch.empty_like(model.shared.weight))
    model = model.to_empty(device="cpu")
    model.encoder.embed_tokens.weight = model.decoder.embed_tokens.weight = model.shared.weight
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0, 0.05, generator=generator)
    model.all_tied_weights_keys.pop("lm_head.weight", None)
    model.save_pretrained(out)
    return sum(p.numel() * p.element_size() for p in model.parameters())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument("--decoder-layers", type=at_least_one, nargs="+", default=[6, 3])
    parser.add_argument("--tokenizer", default="models/teacher", help="any tokenizer folder (only copied)")
    args = parser.parse_args(argv)
    for shape in args.shapes:
        with tempfile.TemporaryDirectory() as tmp:
            teacher = Path(tmp) / "teacher"
            weight_bytes = build_teacher(shape, teacher)
            for layers in args.decoder_layers:
                command = [sys.executable, "-m", "distill.student", "--teacher", str(teacher), "--tokenizer",
                           args.tokenizer, "--decoder-layers", str(layers), "--out", str(Path(tmp) / f"s{layers}")]
                start = time.perf_counter()
                result = subprocess.run(command, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # the largest child so far
                print(json.dumps({"shape": shape, "decoder_layers": layers, "ok": result.returncode == 0,
                                  "seconds": round(seconds, 1), "peak_rss_gb": round(peak / 1e9, 2),
                                  "teacher_gb": round(weight_bytes / 1e9, 2),
                                  "peak_over_weights": round(peak / weight_bytes, 2),
                                  "error": result.stderr.strip().splitlines()[-1] if result.returncode else None}),
                      flush=True)


if __name__ == "__main__":
    main()
