"""Score a saved model on a dataset split: corpus BLEU and chrF (sacrebleu, detokenized) or ROUGE, greedy by default.

    python -m distill.score --model models/teacher --split test --out models/teacher/metrics.json

This is the number a trained model carries with it (the teacher's `metrics.json`); the evaluation harness (`eval/`)
compares variants side by side. References are the target column, plus `--extra-references` columns when given
(multi-reference BLEU); the headline BLEU uses the target column alone.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from distill.data import DataConfig, encode, load_split
from distill.errors import UserError, at_least_one, cli_errors
from distill.files import package_version, write_text_whole
from distill.generation_torch import torch_generate_texts
from distill.metrics import score
from distill.models import inference_device, load_t5, load_tokenizer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distill.score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model folder or hub id")
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder or hub id (default: the model's)")
    parser.add_argument("--data", default="data/bible", help="dataset folder or hub id")
    parser.add_argument("--name", default=None, help="hub dataset config name (e.g. ro-en)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--source-column", default="en")
    parser.add_argument("--target-column", default="fr")
    parser.add_argument("--extra-references", nargs="*", default=[], help="further reference columns")
    parser.add_argument("--task-prefix", default=None,
                        help="default: the model config's task_specific_params prefix, else none")
    parser.add_argument("--metric", choices=["bleu", "rouge"], default="bleu")
    parser.add_argument("--num-beams", type=at_least_one, default=1)
    parser.add_argument("--max-new-tokens", type=at_least_one, default=256)
    parser.add_argument("--limit", type=at_least_one, default=None, help="score only the first N examples")
    parser.add_argument("--drop-invalid", action="store_true",
                        help="drop rows whose source or target is null, not text or empty (default: refuse them)")
    parser.add_argument("--out", type=Path, default=None, help="write the metrics as JSON here")
    parser.add_argument("--predictions", type=Path, default=None, help="write one prediction per line here")
    args = parser.parse_args(argv)
    for option, path in (("--out", args.out), ("--predictions", args.predictions)):
        if path is not None and path.is_dir():
            parser.error(f"{option} {path} is a folder; give a file name (e.g. {path / 'metrics.json'}).")
    if args.out is not None and args.predictions is not None and args.out.resolve() == args.predictions.resolve():
        parser.error(f"--out and --predictions are the same file ({args.out}): the predictions would overwrite the "
                     "metrics; give two names.")
    with cli_errors("python -m distill.score"):
        _run(args, argv)


def _run(args: argparse.Namespace, argv: list[str] | None) -> None:
    """Generate for the split, score, print the metrics and write the files that `args` asks for."""
    for option, path in (("--out", args.out), ("--predictions", args.predictions)):
        if path is not None:  # checked before the long generation, not after it
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"{option} {path}: its folder cannot be created ({err}).") from err
    if args.out is not None and args.out.exists() and not _earlier_metrics(args.out):
        raise UserError(f"--out {args.out} exists and is not the metrics of an earlier `python -m distill.score` "
                        "(a JSON object whose command is one): it is left as it is. Give another file name, or move "
                        "that one away first.")
    model = load_t5(args.model).to(inference_device())
    tokenizer = load_tokenizer(args.tokenizer or args.model, model.config.vocab_size)
    prefix = args.task_prefix
    if prefix is None:
        tasks = getattr(model.config, "task_specific_params", None) or {}
        prefix = next((t["prefix"] for t in tasks.values() if "prefix" in t), "")
    config = DataConfig(args.data, args.name, args.source_column, args.target_column, args.extra_references, prefix,
                        args.drop_invalid)
    dataset = load_split(config, args.split)
    if args.limit is not None:
        dataset = dataset.select(range(min(args.limit, len(dataset))))
    encoded = encode(dataset, tokenizer, config, max_source_length=512, max_target_length=512)
    start = time.perf_counter()
    predictions = torch_generate_texts(model, tokenizer, encoded.sources, args.num_beams, args.max_new_tokens)
    seconds = time.perf_counter() - start
    results = score(predictions, [r[:1] for r in encoded.references], args.metric)
    if args.extra_references:
        multi = score(predictions, encoded.references, args.metric)
        results.update({f"{k}_multi_ref": v for k, v in multi.items()})
    metrics = {
        **{k: round(v, 2) for k, v in results.items()},
        "model": args.model, "data": args.data, "split": args.split, "examples": len(predictions),
        "decoding": {"num_beams": args.num_beams, "max_new_tokens": args.max_new_tokens, "task_prefix": prefix},
        "sacrebleu": package_version("sacrebleu"), "torch": torch.__version__, "seconds": round(seconds, 1),
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads",
        "command": "python -m distill.score " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    if args.out:
        write_text_whole(args.out, json.dumps(metrics, indent=2, ensure_ascii=False) + "\n")
    if args.predictions:
        write_text_whole(args.predictions, "\n".join(predictions) + "\n")


def _earlier_metrics(path: Path) -> bool:
    """Whether `path` holds what --out wrote before (so that replacing it loses nothing of the user's)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(data, dict) and str(data.get("command", "")).startswith("python -m distill.score")


if __name__ == "__main__":
    main()
