"""What keeping only the teacher's top k tokens per position loses in the KD term, and how large the caches are.

    python -m bench.kd_topk --teacher models/teacher --data data/bible --examples 100

On `--examples` training examples (evenly spaced), for students shrunk from the teacher (`--decoder-layers`, copied
layers, not trained: far from the teacher, and a deeper one nearer to it), compares the full KL (`distill_kl`) with
the top-k KL of the logit cache (`topk_distill_kl`, values rounded to float16 as the cache keeps them) at each k: the
ratio of the two losses, and the cosine between their gradients with respect to the student's logits (what training
follows). Also prints the teacher's mean probability mass outside its top k, and the bytes the encoder-output and
logit caches take on the whole training split.
"""

from __future__ import annotations

import argparse
import json

import torch

from distill.batching import collate
from distill.data import DataConfig, encode, load_split
from distill.errors import at_least_one, cli_errors
from distill.logit_cache import id_dtype
from distill.losses import distill_kl, topk_distill_kl
from distill.models import load_t5, load_tokenizer
from distill.student import make_student


def compare(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, k: int,
            temperature: float) -> dict:
    """Full against top-k KL of one batch: loss ratio, gradient cosine, the teacher's mass outside its top k."""
    logits = student_logits.clone().requires_grad_(True)
    full = distill_kl(logits, teacher_logits, mask, temperature)
    (full_grad,) = torch.autograd.grad(full, logits)
    top, ids = torch.log_softmax(teacher_logits / temperature, -1).topk(k, -1)
    top = top.half().float()  # as the cache stores it
    truncated = topk_distill_kl(logits, top, ids, mask, temperature)
    (top_grad,) = torch.autograd.grad(truncated, logits)
    cosine = torch.nn.functional.cosine_similarity(full_grad[mask], top_grad[mask], dim=-1).mean()
    rest = (1 - top.exp().sum(-1))[mask].mean()
    return {"k": k, "full_kl": round(full.item(), 4), "topk_kl": round(truncated.item(), 4),
            "ratio": round(truncated.item() / full.item(), 4), "grad_cosine": round(cosine.item(), 4),
            "teacher_mass_outside": round(rest.item(), 5)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", default="models/teacher")
    parser.add_argument("--data", default="data/bible")
    parser.add_argument("--examples", type=at_least_one, default=100)
    parser.add_argument("--decoder-layers", type=at_least_one, nargs="+", default=[2, 5])
    parser.add_argument("--k", type=at_least_one, nargs="+", default=[8, 16, 32, 64, 128])
    parser.add_argument("--temperature", type=float, default=2.0)
    args = parser.parse_args(argv)
    with cli_errors("python -m bench.kd_topk"):
        teacher, tokenizer = load_t5(args.teacher).eval(), load_tokenizer(args.teacher)
        config = DataConfig(path=args.data)
        encoded = encode(load_split(config, "train"), tokenizer, config, 192, 192)
    src_tokens, tgt_tokens = sum(map(len, encoded.sources)), sum(map(len, encoded.targets))
    width = teacher.config.d_model
    id_bytes = 2 if id_dtype(teacher.config.vocab_size) == "int16" else 4
    sizes = {"examples": len(encoded), "source_tokens": src_tokens, "target_tokens": tgt_tokens,
             "encoder_cache_mb": round(src_tokens * width * 2 / 1e6, 1),
             **{f"logit_cache_k{k}_mb": round(tgt_tokens * k * (2 + id_bytes) / 1e6, 1) for k in args.k}}
    print(json.dumps({"cache_sizes": sizes}), flush=True)
    stride = max(1, len(encoded) // args.examples)
    rows = [{"index": i, "input_ids": encoded.sources[i], "labels": encoded.targets[i], "references": []}
            for i in range(0, len(encoded), stride)][:args.examples]
    batch = collate(rows, tokenizer.pad_token_id)
    mask = batch["labels"] != -100
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "decoder_input_ids": teacher._shift_right(batch["labels"]), "use_cache": False}
    with torch.no_grad():
        teacher_logits = teacher(**inputs).logits
    for layers in args.decoder_layers:
        with torch.no_grad():
            student_logits = make_student(teacher, decoder_layers=layers)[0].eval()(**inputs).logits
        for k in args.k:
            result = compare(student_logits, teacher_logits, mask, k, args.temperature)
            print(json.dumps({"student_decoder_layers": layers, **result}), flush=True)


if __name__ == "__main__":
    main()
