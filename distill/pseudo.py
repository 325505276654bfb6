"""Pseudo-labels: the teacher's beam-search outputs for the training inputs, generated once and cached as a dataset.

    python -m distill.pseudo --teacher models/teacher --data data/bible --out data/pseudo/teacher-beam4

The output folder is a dataset like the input one: `train.jsonl` holds the input rows with the target column replaced by
the teacher's translation (the original target kept as `<target>_reference`); validation and test are copied unchanged,
so students are still scored against the human references. Generation is saved in chunks to a hidden
`.<out name>.train.partial.jsonl` beside `--out`, headed by its settings: an interrupted run with the same settings
continues where it stopped, one with other settings starts over. A student is then fine-tuned on it with plain SFT
(`configs/distill/pseudo.yaml`).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

from distill._files import replace_dir
from distill.data import DataConfig, encode, load_split
from distill.module import inference_device, load_t5, load_tokenizer
from distill.score import translate


def make_pseudo_labels(teacher: str, data: DataConfig, out: Path, num_beams: int = 4, max_new_tokens: int = 256,
                       chunk: int = 1000, limit: int | None = None) -> Path:
    model, tokenizer = load_t5(teacher).to(inference_device()), load_tokenizer(teacher)
    train = load_split(data, "train")
    if limit:
        train = train.select(range(min(limit, len(train))))
    encoded = encode(train, tokenizer, data, max_source_length=512, max_target_length=512)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.parent / f".{out.name}.train.partial.jsonl"
    settings = {"teacher": teacher, "data": data.path, "name": data.name, "source_column": data.source_column,
                "task_prefix": data.task_prefix, "num_beams": num_beams, "max_new_tokens": max_new_tokens}
    labels = _resume(partial, settings)[:len(encoded)]
    if not labels:
        partial.write_text(json.dumps({"settings": settings}, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(partial, "a", encoding="utf-8") as f:
        for start in range(len(labels), len(encoded), chunk):
            print(f"pseudo-labels {start}/{len(encoded)}", file=sys.stderr, flush=True)
            outputs = translate(model, tokenizer, encoded.sources[start:start + chunk], num_beams, max_new_tokens)
            for text in outputs:
                f.write(json.dumps({"label": text}, ensure_ascii=False) + "\n")
            f.flush()
            labels += outputs
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pseudo"
        staged.mkdir()
        with open(staged / "train.jsonl", "w", encoding="utf-8") as f:
            for row, label in zip(train, labels, strict=True):
                f.write(json.dumps(_relabel(row, data.target_column, label), ensure_ascii=False) + "\n")
        for split in ("validation", "test"):
            rows = load_split(data, split)
            rows = rows.remove_columns([c for c in rows.column_names if "." in c])  # load_split's flat helpers
            rows.to_json(staged / f"{split}.jsonl", force_ascii=False, lines=True)
        manifest = {**settings, "target_column": data.target_column, "train_rows": len(labels),
                    "command": "python -m distill.pseudo " + " ".join(sys.argv[1:])}
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        replace_dir(staged, out)
    partial.unlink()
    return out


def _resume(partial: Path, settings: dict) -> list[str]:
    """Labels already generated with the same settings; a partial file made otherwise is started over."""
    if not partial.exists():
        return []
    lines = partial.read_text(encoding="utf-8").splitlines()
    if not lines or json.loads(lines[0]).get("settings") != settings:
        print(f"{partial} was made with other settings: starting over", file=sys.stderr)
        return []
    print(f"resuming from {partial}: {len(lines) - 1} labels done", file=sys.stderr)
    return [json.loads(line)["label"] for line in lines[1:]]


def _relabel(row: dict, target: str, label: str) -> dict:
    """The row with its target replaced by `label` and the human one kept beside it as `<target>_reference`.

    A dotted target (`translation.ro`) is a field of a nested column: the label goes into that field, and the flat
    helper columns that `load_split` added are dropped, so that loading the result reads the label, not the original.
    """
    row = copy.deepcopy({k: v for k, v in row.items() if "." not in k})
    *parents, leaf = target.split(".")
    node = row
    for key in parents:
        node = node[key]
    node[f"{leaf}_reference"], node[leaf] = node[leaf], label
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", default="data/bible")
    parser.add_argument("--name", default=None)
    parser.add_argument("--source-column", default="en")
    parser.add_argument("--target-column", default="fr")
    parser.add_argument("--task-prefix", default="translate English to French: ")
    parser.add_argument("--num-beams", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--limit", type=int, default=None, help="label only the first N training rows")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    data = DataConfig(args.data, args.name, args.source_column, args.target_column, [], args.task_prefix)
    out = make_pseudo_labels(args.teacher, data, args.out, args.num_beams, args.max_new_tokens, limit=args.limit)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
