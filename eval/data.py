"""The examples every variant is scored on: source texts (task prefix included) and all their references.

The split is read by `distill.data.load_split`, the project's one dataset reader (a local folder of
`{split}.jsonl` / `.json` / `.csv` / `.parquet`, a single data file, or a hub id with an optional config name; a
dotted column such as `translation.en` reads a field of a nested column); its problems are `distill.errors.DataError`.
Its rules hold here too: an empty file or split, a malformed line, and a row whose source or target is null, not text
or empty are refused, naming the file, the line (or row) and the column, so every variant is scored on usable rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from distill.data import DataConfig, load_split
from eval.config import DatasetConfig


@dataclass
class Examples:
    sources: list[str]  # task prefix + source text
    references: list[list[str]]  # references[i]: the target column first, then the non-empty extra references

    def __len__(self) -> int:
        return len(self.sources)


def load_examples(config: DatasetConfig) -> Examples:
    """The configured split, its first `limit` rows, as prefixed sources and reference lists."""
    data = DataConfig(path=config.path, name=config.name, source_column=config.source_column,
                      target_column=config.target_column, extra_columns=list(config.extra_references),
                      task_prefix=config.task_prefix)
    dataset = load_split(data, config.split)
    if config.limit is not None:
        dataset = dataset.select(range(min(config.limit, len(dataset))))
    sources = [config.task_prefix + s for s in dataset[config.source_column]]
    targets = list(dataset[config.target_column])
    extra = [list(dataset[c]) for c in config.extra_references]
    references = [[t, *(e[i] for e in extra if e[i])] for i, t in enumerate(targets)]
    return Examples(sources, references)
