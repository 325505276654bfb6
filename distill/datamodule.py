"""The Lightning data module of training: train/validation/test loaders of one dataset, batched by token count."""

from __future__ import annotations

from functools import partial

import lightning as L
from torch.utils.data import DataLoader

from distill.batching import EncodedDataset, ResumableLoader, TokenBatchSampler, collate
from distill.data import DataConfig, Encoded, encode, load_split
from distill.errors import DataError
from distill.models import load_tokenizer


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
        drop_invalid: bool = False,  # drop rows with a null, non-text or empty source/target instead of refusing
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        positive = {"max_source_length": max_source_length, "max_target_length": max_target_length,
                    "max_tokens": max_tokens, "eval_max_tokens": eval_max_tokens,
                    "limit_train_examples": 1 if limit_train_examples is None else limit_train_examples}
        bad = [f"data.{key}={value}" for key, value in positive.items() if value < 1]
        if bad:
            unlimited = " (leave limit_train_examples out to train on every example)" if "limit" in bad[-1] else ""
            raise DataError(f"{', '.join(bad)}: must be >= 1{unlimited}.")
        self.data_config = DataConfig(path, name, source_column, target_column, list(extra_columns or []),
                                      task_prefix, drop_invalid)
        self.tokenizer_path = tokenizer
        self.encoded: dict[str, Encoded] = {}

    def setup(self, stage: str) -> None:
        tokenizer = load_tokenizer(self.tokenizer_path)
        self.pad_id = tokenizer.pad_token_id
        splits = {"fit": ["train", "validation"], "validate": ["validation"], "test": ["test"],
                  "predict": ["test"]}[stage]
        hp = self.hparams
        for split in splits:
            if split in self.encoded:
                continue
            dataset = load_split(self.data_config, split)
            if split == "train" and hp.limit_train_examples is not None:
                dataset = dataset.select(range(min(hp.limit_train_examples, len(dataset))))
            self.encoded[split] = encode(dataset, tokenizer, self.data_config, hp.max_source_length,
                                         hp.max_target_length)
            self._check_budget(split)

    def _check_budget(self, split: str) -> None:
        """DataError when a batch of `split` could not hold its longest example (TokenBatchSampler needs it to)."""
        hp = self.hparams
        option, max_tokens = ("max_tokens", hp.max_tokens) if split == "train" else ("eval_max_tokens",
                                                                                      hp.eval_max_tokens)
        encoded = self.encoded[split]
        longest = max(len(s) + len(t) for s, t in zip(encoded.sources, encoded.targets, strict=True))
        if max_tokens < longest:
            raise DataError(f"data.{option}={max_tokens} is below the longest {split} example ({longest} tokens, "
                            f"source + target, truncated to max_source_length={hp.max_source_length} and "
                            f"max_target_length={hp.max_target_length}): a batch could not hold it. Set "
                            f"data.{option} to at least {longest}, or lower data.max_source_length / "
                            "data.max_target_length.")

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
