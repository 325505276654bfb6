"""Any sequence-to-sequence dataset, read through `datasets.load_dataset`, tokenized and batched by token count.

A dataset is a local folder holding `{split}.jsonl` / `.json` / `.csv` / `.parquet`, or a hub id (with an optional
config name, e.g. `wmt16` + `ro-en`) for users who have a network: both go through `load_dataset`. Columns are
configurable; a dotted column (`translation.en`) reads a field of a nested column, as hub translation sets store them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Sampler

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}


@dataclass
class DataConfig:
    path: str = "data/bible"  # local folder or hub id
    name: str | None = None  # hub config name, e.g. "ro-en" for wmt16
    source_column: str = "en"
    target_column: str = "fr"
    extra_columns: list[str] = field(default_factory=list)  # e.g. further references, kept but not tokenized
    task_prefix: str = "translate English to French: "


class DataError(SystemExit):
    """A dataset problem the user must fix; SystemExit so command-line entry points print it without a traceback."""


def _is_local(path: str) -> bool:
    return Path(path).exists() or path.startswith((".", "/", "~")) or Path(path).suffix in FORMATS


def load_split(config: DataConfig, split: str):
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


def _select_columns(dataset, config: DataConfig, split: str):
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


def encode(dataset, tokenizer, config: DataConfig, max_source_length: int, max_target_length: int) -> Encoded:
    sources = [config.task_prefix + s for s in dataset[config.source_column]]
    targets = list(dataset[config.target_column])
    extra = [list(dataset[c]) for c in config.extra_columns]
    src = tokenizer(sources, max_length=max_source_length, truncation=True)["input_ids"]
    tgt = tokenizer(text_target=targets, max_length=max_target_length, truncation=True)["input_ids"]
    refs = [[t, *(e[i] for e in extra if e[i])] for i, t in enumerate(targets)]
    return Encoded(src, tgt, sources, refs)


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar length, each holding at most `max_tokens` padded tokens (source + target).

    Sorting by length within pools of `pool` batches cuts padding (each padded token is wasted compute) while the
    pools and the batch order stay shuffled (seeded, reshuffled by `set_epoch`). With several processes, rank r
    takes every world_size-th batch, all ranks the same number of batches. `skip(epoch, n)` makes the next pass over
    `epoch` start at its batch n: how a run resumed mid-epoch continues where it stopped.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                 pool: int = 100, rank: int = 0, world_size: int = 1, max_batch_size: int | None = None):
        if max_tokens < max(lengths, default=0):
            raise ValueError(f"max_tokens={max_tokens} is below the longest example ({max(lengths)} tokens).")
        self.lengths, self.max_tokens, self.shuffle, self.seed = list(lengths), max_tokens, shuffle, seed
        self.pool, self.rank, self.world_size, self.max_batch_size = pool, rank, world_size, max_batch_size
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip(self, epoch: int, batches: int) -> None:
        self._skip = (epoch, batches)

    def _batches(self) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        rng = random.Random(self.seed + self.epoch)
        if self.shuffle:
            rng.shuffle(order)
            pool_size = max(1, self.pool * self.max_tokens // max(1, int(sum(self.lengths) / len(self.lengths))))
            order = [i for s in range(0, len(order), pool_size)
                     for i in sorted(order[s:s + pool_size], key=self.lengths.__getitem__)]
        else:
            order.sort(key=self.lengths.__getitem__)
        batches, batch, longest = [], [], 0
        for i in order:
            new_longest = max(longest, self.lengths[i])
            full = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and (new_longest * (len(batch) + 1) > self.max_tokens or full):
                batches.append(batch)
                batch, new_longest = [], self.lengths[i]
            batch.append(i)
            longest = new_longest
        if batch:
            batches.append(batch)
        if self.shuffle:
            rng.shuffle(batches)
        per_rank = len(batches) // self.world_size if self.world_size > 1 else len(batches)
        return batches[self.rank::self.world_size][:per_rank]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        if self._skip is not None and self._skip[0] == self.epoch:
            batches = batches[self._skip[1]:]
            self._skip = None
        return iter(batches)

    def __len__(self) -> int:
        return len(self._batches())


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in every checkpoint and restores on resume.

    `batches_done()` tells how many batches of the current epoch were trained on (the trainer's count, which, unlike a
    count of batches drawn, is not fooled by prefetching); on resume the sampler skips them, so a run killed mid-epoch
    continues with the batches it had not seen instead of starting the epoch over.
    """

    def __init__(self, *args, batches_done: Callable[[], int], **kwargs):
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_done": self.batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.skip(state["epoch"], state["batches_done"])


class EncodedDataset(torch.utils.data.Dataset):
    def __init__(self, encoded: Encoded):
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "input_ids": self.encoded.sources[i], "labels": self.encoded.targets[i],
                "references": self.encoded.references[i]}


def collate(rows: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Right-pad sources with `pad_id` and labels with -100 (ignored by the loss); references stay strings."""
    src_len = max(len(r["input_ids"]) for r in rows)
    tgt_len = max(len(r["labels"]) for r in rows)
    input_ids = torch.full((len(rows), src_len), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), tgt_len), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r["input_ids"])] = torch.tensor(r["input_ids"])
        labels[i, :len(r["labels"])] = torch.tensor(r["labels"])
    return {"index": torch.tensor([r["index"] for r in rows]), "input_ids": input_ids,
            "attention_mask": (input_ids != pad_id).long(), "labels": labels,
            "references": [r["references"] for r in rows]}


class Seq2SeqDataModule(L.LightningDataModule):
    """Train/validation/test loaders for any source->target dataset, batched by token count."""

    def __init__(
        self,
        tokenizer: str,
        path: str = "data/bible",
        name: str | None = None,
        source_column: str = "en",
        target_column: str = "fr",
        extra_columns: list[str] | None = None,
        task_prefix: str = "translate English to French: ",
        max_source_length: int = 192,
        max_target_length: int = 192,
        max_tokens: int = 4096,  # padded source + target tokens per training batch
        eval_max_tokens: int = 8192,
        limit_train_examples: int | None = None,  # for smoke runs
        seed: int = 1234,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.data_config = DataConfig(path, name, source_column, target_column, list(extra_columns or []),
                                      task_prefix)
        self.tokenizer_path = tokenizer
        self.encoded: dict[str, Encoded] = {}

    def load_tokenizer(self):
        from distill.module import load_tokenizer

        return load_tokenizer(self.tokenizer_path)

    def setup(self, stage: str) -> None:
        tokenizer = self.load_tokenizer()
        self.pad_id = tokenizer.pad_token_id
        splits = {"fit": ["train", "validation"], "validate": ["validation"], "test": ["test"],
                  "predict": ["test"]}[stage]
        hp = self.hparams
        for split in splits:
            if split in self.encoded:
                continue
            dataset = load_split(self.data_config, split)
            if split == "train" and hp.limit_train_examples:
                dataset = dataset.select(range(min(hp.limit_train_examples, len(dataset))))
            self.encoded[split] = encode(dataset, tokenizer, self.data_config, hp.max_source_length,
                                         hp.max_target_length)

    def _sampler(self, split: str, max_tokens: int, shuffle: bool) -> TokenBatchSampler:
        encoded = self.encoded[split]
        lengths = [len(s) + len(t) for s, t in zip(encoded.sources, encoded.targets, strict=True)]
        trainer = self.trainer
        # training batches are sharded by rank; every rank validates and tests on everything (same metrics everywhere)
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None and shuffle else (0, 1)
        return TokenBatchSampler(lengths, max_tokens, shuffle=shuffle, seed=self.hparams.seed, rank=rank,
                                 world_size=world)

    def _loader(self, split: str, max_tokens: int, shuffle: bool) -> DataLoader:
        return DataLoader(EncodedDataset(self.encoded[split]), batch_sampler=self._sampler(split, max_tokens, shuffle),
                          collate_fn=partial(collate, pad_id=self.pad_id))

    def train_dataloader(self) -> DataLoader:
        def batches_done() -> int:
            # called while a checkpoint is saved, after the batch's optimizer step: `processed` counts it already
            return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

        return ResumableLoader(EncodedDataset(self.encoded["train"]),
                               batch_sampler=self._sampler("train", self.hparams.max_tokens, shuffle=True),
                               collate_fn=partial(collate, pad_id=self.pad_id), batches_done=batches_done)

    def val_dataloader(self) -> DataLoader:
        return self._loader("validation", self.hparams.eval_max_tokens, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.hparams.eval_max_tokens, shuffle=False)
