"""Pseudo-labels: the teacher's beam-search outputs for the training inputs, generated once and cached as a dataset.

    python -m distill.pseudo --teacher models/teacher --data data/bible --out data/pseudo/teacher-beam4

The output folder is a dataset like the input one: `train.jsonl` holds the input rows with the target column replaced by
the teacher's translation (the original target kept as `<target>_reference`); validation and test are copied unchanged,
so students are still scored against the human references. Generation is saved in chunks to a hidden
`.<out name>.train.partial.jsonl` beside `--out`, headed by its settings: an interrupted run with the same settings
continues where it stopped, one with other settings starts over. A student is then fine-tuned on it with plain SFT
(`configs/distill/pseudo.yaml`).

`--labels FILE.jsonl.gz` keeps the labels alone (one JSON line each, headed by the settings, the sha256 of the
teacher's weights and of the training sources): when the file matches, the folder is rebuilt from it in seconds
instead of regenerating with beam search over the whole training split; otherwise the labels are generated and the
file is (re)written. The Makefile keeps the committed teacher's labels in models/teacher/.

`--mix-gold` keeps the human target too: every training source appears twice, first with the teacher's label, then
with its original row (configs/distill/pseudo-mixed.yaml trains on that).
"""

from __future__ import annotations

import argparse
import copy
import gzip
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from distill.data import DataConfig, encode, load_split
from distill.errors import DataError, UserError, at_least_one, cli_errors
from distill.files import check_output, replace_dir
from distill.generation import Generate, generate_texts
from distill.generation_torch import torch_generate
from distill.models import inference_device, load_t5, load_tokenizer

if TYPE_CHECKING:
    from datasets import Dataset

# an engine: (teacher, num_beams, max_new_tokens) -> `generate(ids, mask) -> ids`, made only when labels must be made
Engine = Callable[[str, int, int], Generate]
GENERATE_TOKENS = 8192  # padded source tokens times beams per generate call


def make_pseudo_labels(teacher: str, data: DataConfig, out: Path, num_beams: int = 4, max_new_tokens: int = 256,
                       chunk: int = 1000, limit: int | None = None, labels_file: Path | None = None,
                       mix_gold: bool = False, engine: Engine | None = None) -> Path:
    """Write the pseudo-label dataset of `teacher` on `data` to `out`, reusing `labels_file` or a partial run when they
    match; returns `out`. With `mix_gold`, each training row is followed by its original (human) row.

    `engine`: what generates the labels when they must be (None: transformers' `generate`); another engine must give
    the same tokens, since the labels file and a partial run are reused whichever engine made them."""
    check_output(out, inputs=(data.path, teacher, labels_file))  # before hours of generation: refusals first
    for name, value in (("num_beams", num_beams), ("max_new_tokens", max_new_tokens), ("chunk", chunk)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{name} must be a whole number >= 1, got {value!r}.")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UserError(f"limit must be a whole number >= 1 (or None for every row), got {limit!r}.")
    if labels_file is not None:
        _check_labels_path(Path(labels_file))
    train = load_split(data, "train")
    if limit is not None:
        train = train.select(range(min(limit, len(train))))
    settings = {"teacher": teacher, "data": data.path, "name": data.name, "source_column": data.source_column,
                "task_prefix": data.task_prefix, "num_beams": num_beams, "max_new_tokens": max_new_tokens}
    fingerprint = {**settings, "teacher_sha256": _weights_sha256(teacher),
                   "sources_sha256": _sources_sha256(train, data), "rows": len(train)}
    labels = _read_labels(labels_file, fingerprint) if labels_file else None
    if labels is None:
        labels = _generate(teacher, train, data, out, settings, num_beams, max_new_tokens, chunk,
                           engine or torch_engine)
        if labels_file:
            _write_labels(labels_file, fingerprint, labels)
    _write_dataset(train, labels, data, out, settings, mix_gold)
    _partial(out).unlink(missing_ok=True)  # only now: a crash before this point keeps the labels made so far
    return out


def _partial(out: Path) -> Path:
    return out.parent / f".{out.name}.train.partial.jsonl"


def torch_engine(teacher: str, num_beams: int, max_new_tokens: int) -> Generate:
    """transformers' `generate` on the teacher: the reference engine."""
    return torch_generate(load_t5(teacher).to(inference_device()).eval(), num_beams, max_new_tokens)


def _generate(teacher: str, train: Dataset, data: DataConfig, out: Path, settings: dict, num_beams: int,
              max_new_tokens: int, chunk: int, engine: Engine) -> list[str]:
    tokenizer = load_tokenizer(teacher)
    encoded = encode(train, tokenizer, data, max_source_length=512, max_target_length=512)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = _partial(out)
    labels = _resume(partial, settings)[:len(encoded)]
    generate: Generate | None = None  # the engine starts (loads or exports the teacher) only if a label is missing
    if not labels:
        partial.write_text(json.dumps({"settings": settings}, ensure_ascii=False) + "\n", encoding="utf-8")
    with open(partial, "a", encoding="utf-8") as f:
        for start in range(len(labels), len(encoded), chunk):
            print(f"pseudo-labels {start}/{len(encoded)}", file=sys.stderr, flush=True)
            generate = generate or engine(teacher, num_beams, max_new_tokens)
            outputs = generate_texts(generate, lambda ids: tokenizer.batch_decode(ids, skip_special_tokens=True),
                                     encoded.sources[start:start + chunk], tokenizer.pad_token_id,
                                     max_tokens=GENERATE_TOKENS, num_beams=num_beams, progress=True)
            for text in outputs:
                f.write(json.dumps({"label": text}, ensure_ascii=False) + "\n")
            f.flush()
            labels += outputs
    return labels


def _write_dataset(train: Dataset, labels: list[str], data: DataConfig, out: Path, settings: dict,
                   mix_gold: bool = False) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "pseudo"
        staged.mkdir()
        with open(staged / "train.jsonl", "w", encoding="utf-8") as f:
            for row, label in zip(train, labels, strict=True):
                f.write(json.dumps(_relabel(row, data.target_column, label), ensure_ascii=False) + "\n")
                if mix_gold:  # the same source again, with its human target (and no `_reference` column)
                    gold = {k: v for k, v in row.items() if "." not in k}
                    f.write(json.dumps(gold, ensure_ascii=False) + "\n")
        for split in ("validation", "test"):
            rows = load_split(data, split)
            rows = rows.remove_columns([c for c in rows.column_names if "." in c])  # load_split's flat helpers
            rows.to_json(staged / f"{split}.jsonl", force_ascii=False, lines=True)
        manifest = {**settings, "target_column": data.target_column, "mix_gold": mix_gold,
                    "train_rows": len(labels) * (2 if mix_gold else 1),
                    "command": "python -m distill.pseudo " + " ".join(sys.argv[1:])}
        (staged / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        replace_dir(staged, out)


def _weights_sha256(teacher: str) -> str | None:
    """sha256 of a local teacher's safetensors (None for a hub id: its revision is the hub's business)."""
    files = sorted(Path(teacher).glob("*.safetensors")) if Path(teacher).is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _sources_sha256(train: Dataset, data: DataConfig) -> str:
    column = data.source_column
    return hashlib.sha256("\n".join(str(x) for x in train[column]).encode("utf-8")).hexdigest()


def _check_labels_path(path: Path) -> None:
    """DataError, before any generation, when --labels could be neither read nor (re)written."""
    if path.is_dir():
        raise DataError(f"--labels {path} is a folder; give a file name (e.g. {path / 'labels.jsonl.gz'}).")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise DataError(f"--labels {path}: {parent} is a file, not a folder; give another --labels path.")


def _read_labels(path: Path, fingerprint: dict) -> list[str] | None:
    """The labels of `path` when it was made from the same teacher weights, sources and settings; else None.
    DataError when it is not a labels file (it is never overwritten then)."""
    if not path.is_file():
        return None
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            header = json.loads(f.readline())
            if not isinstance(header, dict) or "fingerprint" not in header:
                raise ValueError("its first line holds no fingerprint")
            if header.get("fingerprint") != fingerprint:
                print(f"{path} was made from another teacher, other data or other settings: generating anew",
                      file=sys.stderr)
                return None
            labels = [json.loads(line)["label"] for line in f]
    except (OSError, EOFError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"--labels {path} is not a labels file of `python -m distill.pseudo` (gzip JSON lines "
                        f"headed by a fingerprint): {type(err).__name__}: {err}. It is left as it is; give another "
                        "--labels path, or delete that file to generate the labels anew.") from None
    if len(labels) != fingerprint["rows"]:
        print(f"{path} holds {len(labels)} labels for {fingerprint['rows']} rows: generating anew", file=sys.stderr)
        return None
    print(f"labels from {path} (same teacher weights, sources and settings)", file=sys.stderr)
    return labels


def _write_labels(path: Path, fingerprint: dict, labels: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as raw:  # mtime 0: the same labels give the same bytes
        lines = [json.dumps({"fingerprint": fingerprint}, ensure_ascii=False)]
        lines += [json.dumps({"label": label}, ensure_ascii=False) for label in labels]
        raw.write(("\n".join(lines) + "\n").encode("utf-8"))
    os.replace(tmp, path)


def _resume(partial: Path, settings: dict) -> list[str]:
    """Labels already generated with the same settings; a partial file made otherwise, or unreadable, is started
    over. A line cut short by a kill (and anything after it) is dropped from the file, so that appending continues
    on whole lines."""
    if not partial.is_file():
        return []
    raw = partial.read_bytes()
    labels: list[str] = []
    kept = 0  # bytes of whole, readable lines
    for number, line in enumerate(raw.splitlines(keepends=True)):
        try:
            row = json.loads(line.decode("utf-8")) if line.endswith(b"\n") else None
            value = row.get("settings") if number == 0 else row["label"]
        except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
            value = None
        if number == 0 and value != settings:
            print(f"{partial} was made with other settings, or is not readable: starting over", file=sys.stderr)
            return []
        if not isinstance(value, str if number else dict):
            break
        if number:
            labels.append(value)
        kept += len(line)
    if kept < len(raw):
        with open(partial, "r+b") as f:
            f.truncate(kept)
        print(f"{partial}: dropped an incomplete line left by an interrupted run", file=sys.stderr)
    print(f"resuming from {partial}: {len(labels)} labels done", file=sys.stderr)
    return labels


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


def arguments(description: str | None = __doc__) -> argparse.ArgumentParser:
    """The command line of `python -m distill.pseudo`, which `python -m export.labels` extends."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", required=True)
    parser.add_argument("--data", default="data/bible")
    parser.add_argument("--name", default=None)
    parser.add_argument("--source-column", default="en")
    parser.add_argument("--target-column", default="fr")
    parser.add_argument("--task-prefix", default="translate English to French: ")
    parser.add_argument("--num-beams", type=at_least_one, default=4)
    parser.add_argument("--max-new-tokens", type=at_least_one, default=256)
    parser.add_argument("--limit", type=at_least_one, default=None, help="label only the first N training rows")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--labels", type=Path, default=None,
                        help="a .jsonl.gz of the labels alone: reused when it matches, else (re)written")
    parser.add_argument("--mix-gold", action="store_true",
                        help="keep every training row's human target too, as a second row after the teacher's")
    return parser


def run(args: argparse.Namespace, engine: Engine | None = None) -> Path:
    """`make_pseudo_labels` with the parsed command line of `arguments`."""
    data = DataConfig(args.data, args.name, args.source_column, args.target_column, [], args.task_prefix)
    return make_pseudo_labels(args.teacher, data, args.out, args.num_beams, args.max_new_tokens, limit=args.limit,
                              labels_file=args.labels, mix_gold=args.mix_gold, engine=engine)


def main(argv: list[str] | None = None) -> None:
    args = arguments().parse_args(argv)
    with cli_errors("python -m distill.pseudo"):
        out = run(args)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
