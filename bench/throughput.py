"""Measure training throughput of T5 shapes on this machine: how the teacher's size was chosen.

    python -m bench.throughput --tokenizer data/tokenizer --data data/bible --steps 12

Runs a few optimizer steps (forward, backward, clipping, AdamW) of each candidate shape on real batches of the
training split, batched by token count as in training, and prints one JSON line per shape: parameters, real tokens
(source + target, padding excluded) per second, seconds per step, and the share of batch cells that are not padding.
Nothing else should run meanwhile: the numbers are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from distill.batching import EncodedDataset, TokenBatchSampler, collate
from distill.data import DataConfig, encode, load_split
from distill.errors import cli_errors
from distill.losses import label_smoothed_ce
from distill.models import load_tokenizer

SHAPES = {
    "d128-ff512": {"d_model": 128, "d_ff": 512, "num_heads": 4, "d_kv": 32},
    "d192-ff640": {"d_model": 192, "d_ff": 640, "num_heads": 6, "d_kv": 32},
    "d192-ff768": {"d_model": 192, "d_ff": 768, "num_heads": 4, "d_kv": 48},
    "d256-ff1024": {"d_model": 256, "d_ff": 1024, "num_heads": 4, "d_kv": 64},
}


def measure(shape: dict, vocab_size: int, dataset: EncodedDataset, lengths: list[int], max_tokens: int, bf16: bool,
            steps: int, warmup: int = 2) -> dict:
    """Throughput of `steps` training steps of a 6+6-layer T5 of `shape`, after `warmup` steps that are not timed."""
    from transformers import T5Config, T5ForConditionalGeneration

    config = T5Config(vocab_size=vocab_size, num_layers=6, num_decoder_layers=6, decoder_start_token_id=0, **shape)
    model = T5ForConditionalGeneration(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = iter(TokenBatchSampler(lengths, max_tokens, seed=1))
    tokens = cells = 0
    for step in range(warmup + steps):
        batch = collate([dataset[i] for i in next(batches)])
        if step == warmup:
            start, tokens, cells = time.perf_counter(), 0, 0
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           decoder_input_ids=model._shift_right(batch["labels"])).logits
        loss = label_smoothed_ce(logits, batch["labels"], 0.1)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
        cells += batch["input_ids"].numel() + batch["labels"].numel()
    seconds = time.perf_counter() - start
    return {"params": sum(p.numel() for p in model.parameters()), "max_tokens": max_tokens, "bf16": bf16,
            "tokens_per_s": round(tokens / seconds), "s_per_step": round(seconds / steps, 3),
            "non_padding": round(tokens / cells, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", default="data/tokenizer")
    parser.add_argument("--data", default="data/bible")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[4096])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--fp32", action="store_true", help="also measure without bf16 autocast")
    args = parser.parse_args(argv)
    with cli_errors("python -m bench.throughput"):
        tokenizer = load_tokenizer(args.tokenizer)
        config = DataConfig(path=args.data)
        encoded = encode(load_split(config, "train"), tokenizer, config, 192, 192)
    lengths = [len(s) + len(t) for s, t in zip(encoded.sources, encoded.targets, strict=True)]
    dataset = EncodedDataset(encoded)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for name in args.shapes:
        for max_tokens in args.max_tokens:
            for bf16 in ([True, False] if args.fp32 else [True]):
                result = measure(SHAPES[name], len(tokenizer), dataset, lengths, max_tokens, bf16, args.steps)
                print(json.dumps({"shape": name, **result}), flush=True)


if __name__ == "__main__":
    main()
