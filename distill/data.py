"""Any sequence-to-sequence dataset, read through `datasets.load_dataset` and tokenized: the one dataset loader that
training, scoring, pseudo-labels and the evaluation harness share.

A dataset is a local folder holding `{split}.jsonl` / `.json` / `.csv` / `.parquet`, or a hub id (with an optional
config name, e.g. `wmt16` + `ro-en`) for users who have a network: both go through `load_dataset`. Columns are
configurable; a dotted column (`translation.en`) reads a field of a nested column, as hub translation sets store them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from distill.errors import DataError

if TYPE_CHECKING:
    from datasets import Dataset
    from transformers import PreTrainedTokenizerBase

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class DataConfig:
    """Where a dataset is and which of its columns hold the source, the target and further references."""

    path: str = "data/bible"  # local folder or hub id
    name: str | None = None  # hub config name, e.g. "ro-en" for wmt16
    source_column: str = "en"
    target_column: str = "fr"
    extra_columns: list[str] = field(default_factory=list)  # e.g. further references, kept but not tokenized
    task_prefix: str = "translate English to French: "


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~")) or Path(path).suffix in FORMATS


def load_split(config: DataConfig, split: str) -> Dataset:
    """Load one split as a `datasets.Dataset` whose columns include the configured ones (flattened when dotted)."""
    import datasets

    if _is_local(config.path):
        folder = Path(config.path).expanduser()
        if folder.is_file():
            files = {split: str(folder)}
            builder = FORMATS.get(folder.suffix)
        else:
            if not folder.is_dir():
                raise DataError(f"Dataset folder {folder} does not exist. Build the default one with `make data`, "
                                "or pass a folder holding train/validation/test .jsonl, .csv or .parquet files.")
            found = sorted(p for p in folder.glob(f"{split}.*") if p.suffix in FORMATS)
            if not found:
                have = sorted(p.name for p in folder.iterdir())
                raise DataError(f"No file for split {split!r} in {folder} (expected {split}.jsonl, .json, .csv or "
                                f".parquet; found {have}).")
            files, builder = {split: str(found[0])}, FORMATS[found[0].suffix]
        if builder is None:
            raise DataError(f"{folder}: unsupported file type; use one of {sorted(FORMATS)}.")
        try:
            dataset = datasets.load_dataset(builder, data_files=files, split=split)
        except Exception as err:  # a parse error of the user's file: say which file
            raise DataError(f"Could not read {files[split]} as {builder}: {err}") from err
    else:
        try:
            dataset = datasets.load_dataset(config.path, config.name, split=split)
        except Exception as err:  # offline, unknown id, unknown split: all need the same advice
            raise DataError(
                f"Could not load dataset {config.path!r} (config {config.name!r}, split {split!r}) from the Hugging "
                f"Face hub: {type(err).__name__}: {err}\nThe hub may be unreachable from this machine; a local folder "
                "holding {train,validation,test}.jsonl works offline (`make data` builds one)."
            ) from err
    return _select_columns(dataset, config, split)


def _select_columns(dataset: Dataset, config: DataConfig, split: str) -> Dataset:
    wanted = [config.source_column, config.target_column, *config.extra_columns]
    missing = [c for c in wanted if c.split(".")[0] not in dataset.column_names]
    if missing:
        raise DataError(f"Dataset {config.path!r} split {split!r} has no column {missing[0]!r} "
                        f"(columns: {dataset.column_names}); set source_column / target_column accordingly.")
    if len(dataset) == 0:
        raise DataError(f"Dataset {config.path!r} split {split!r} is empty.")
    dotted = [c for c in wanted if "." in c]
    if dotted:
        def flatten(row: dict) -> dict:
            out = {}
            for column in dotted:
                value = row
                for key in column.split("."):
                    value = value[key]
                out[column] = value
            return out
        dataset = dataset.map(flatten)
    return dataset


@dataclass
class Encoded:
    """A tokenized split: ids without padding, plus the raw texts that scoring needs."""

    sources: list[list[int]]
    targets: list[list[int]]
    source_texts: list[str]
    references: list[list[str]]  # references[i] = all references of example i (target first)

    def __len__(self) -> int:
        return len(self.sources)


def encode(dataset: Dataset, tokenizer: PreTrainedTokenizerBase, config: DataConfig, max_source_length: int,
           max_target_length: int) -> Encoded:
    """Prefixed sources and targets tokenized (truncated, with eos), and each example's references (target first)."""
    sources = [config.task_prefix + s for s in dataset[config.source_column]]
    targets = list(dataset[config.target_column])
    extra = [list(dataset[c]) for c in config.extra_columns]
    src = tokenizer(sources, max_length=max_source_length, truncation=True)["input_ids"]
    tgt = tokenizer(text_target=targets, max_length=max_target_length, truncation=True)["input_ids"]
    refs = [[t, *(e[i] for e in extra if e[i])] for i, t in enumerate(targets)]
    return Encoded(src, tgt, sources, refs)
