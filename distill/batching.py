"""Training batches by token count: the sampler, the dataset of tokenized examples it indexes, the padding collate
function, and a loader whose position survives a resume.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from distill.data import Encoded


class TokenBatchSampler(Sampler[list[int]]):
    """Batches of examples of similar length, each holding at most `max_tokens` padded tokens (source + target).

    Sorting by length within pools of `pool` batches cuts padding (each padded token is wasted compute) while the
    pools and the batch order stay shuffled (seeded, reshuffled by `set_epoch`). With several processes, rank r
    takes every world_size-th batch, all ranks the same number of batches. `skip(epoch, n)` makes the next pass over
    `epoch` start at its batch n: how a run resumed mid-epoch continues where it stopped.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                 pool: int = 100, rank: int = 0, world_size: int = 1, max_batch_size: int | None = None) -> None:
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
            mean = int(sum(self.lengths) / max(1, len(self.lengths)))  # no examples: no batches, not an error
            pool_size = max(1, self.pool * self.max_tokens // max(1, mean))
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

    def __init__(self, *args: Any, batches_done: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_done = batches_done

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.batch_sampler.epoch, "batches_done": self.batches_done()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.batch_sampler.skip(state["epoch"], state["batches_done"])


class EncodedDataset(torch.utils.data.Dataset):
    """The examples of a tokenized split, one dict each: its index, source ids, target ids and references."""

    def __init__(self, encoded: Encoded) -> None:
        self.encoded = encoded

    def __len__(self) -> int:
        return len(self.encoded)

    def __getitem__(self, i: int) -> dict:
        return {"index": i, "input_ids": self.encoded.sources[i], "labels": self.encoded.targets[i],
                "references": self.encoded.references[i]}


def collate(rows: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor | list[list[str]]]:
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
