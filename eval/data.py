"""The examples every variant is scored on: source texts (task prefix included) and all their references.

The dataset conventions are the project's (README, `distill/data.py`): a local folder holding `{split}.jsonl` /
`.json` / `.csv` / `.parquet`, a single data file, or a hub id with an optional config name, all read through
`datasets.load_dataset`; a dotted column (`translation.en`) reads a field of a nested column. `eval` keeps its own
copy of these few lines because no top-level package imports another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.config import DatasetConfig

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


class DataError(SystemExit):
    """A dataset problem the user must fix; SystemExit so `python -m eval` prints it without a traceback."""


@dataclass
class Examples:
    sources: list[str]  # task prefix + source text
    references: list[list[str]]  # references[i]: the target column first, then the non-empty extra references

    def __len__(self) -> int:
        return len(self.sources)


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~")) or Path(path).suffix in FORMATS


def _load(config: DatasetConfig):
    import datasets

    split = config.split
    if not _is_local(config.path):
        try:
            return datasets.load_dataset(config.path, config.name, split=split)
        except Exception as err:  # offline, unknown id, unknown split: all need the same advice
            raise DataError(
                f"Could not load dataset {config.path!r} (config {config.name!r}, split {split!r}) from the Hugging "
                f"Face hub: {type(err).__name__}: {err}\nThe hub may be unreachable from this machine; a local folder "
                "holding {train,validation,test}.jsonl works offline (`make data` builds one).") from err
    folder = Path(config.path).expanduser()
    if folder.is_file():
        file = folder
    elif not folder.is_dir():
        raise DataError(f"Dataset folder {folder} does not exist. Build the default one with `make data`, or set "
                        "dataset.path to a folder holding train/validation/test .jsonl, .csv or .parquet files.")
    else:
        found = sorted(p for p in folder.glob(f"{split}.*") if p.suffix in FORMATS)
        if not found:
            raise DataError(f"No file for split {split!r} in {folder} (expected {split}.jsonl, .json, .csv or "
                            f".parquet; found {sorted(p.name for p in folder.iterdir())}).")
        file = found[0]
    if file.suffix not in FORMATS:
        raise DataError(f"{file}: unsupported file type; use one of {sorted(FORMATS)}.")
    try:
        return datasets.load_dataset(FORMATS[file.suffix], data_files={split: str(file)}, split=split)
    except Exception as err:  # a parse error of the user's file: say which file
        raise DataError(f"Could not read {file} as {FORMATS[file.suffix]}: {err}") from err


def _column(dataset, column: str) -> list:
    top, *rest = column.split(".")
    values = dataset[top]
    for key in rest:
        values = [v[key] for v in values]
    return list(values)


def load_examples(config: DatasetConfig) -> Examples:
    """The configured split, its first `limit` rows, as prefixed sources and reference lists."""
    dataset = _load(config)
    wanted = [config.source_column, config.target_column, *config.extra_references]
    missing = [c for c in wanted if c.split(".")[0] not in dataset.column_names]
    if missing:
        raise DataError(f"Dataset {config.path!r} split {config.split!r} has no column {missing[0]!r} (columns: "
                        f"{dataset.column_names}); set dataset.source_column / target_column / extra_references.")
    if config.limit is not None:
        dataset = dataset.select(range(min(config.limit, len(dataset))))
    if len(dataset) == 0:
        raise DataError(f"Dataset {config.path!r} split {config.split!r} is empty.")
    sources = [config.task_prefix + s for s in _column(dataset, config.source_column)]
    targets = _column(dataset, config.target_column)
    extra = [_column(dataset, c) for c in config.extra_references]
    references = [[t, *(e[i] for e in extra if e[i])] for i, t in enumerate(targets)]
    return Examples(sources, references)
