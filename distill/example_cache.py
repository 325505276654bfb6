"""A folder of per-example arrays computed once (encoder outputs, a teacher's top-k log-probabilities) and read back
batch by batch: built in shards, resumable, rebuilt when what it was computed from changes.

Layout of the folder:

    build.json              the fingerprint (weights, data, settings) the shards are computed for; written first
    shard-00000/            examples [0, shard_size): offsets.npy (n + 1 row offsets) and one <field>.npy per field,
    shard-00001/ ...        each of shape (rows of all examples, *field shape); renamed into place when complete
    manifest.json           the fingerprint again, the shards, the fields and the bytes; written last

A folder whose manifest matches the fingerprint is used as it is. One whose build.json matches (an interrupted build)
keeps its complete shards and computes the rest. Anything else of ours (another fingerprint) is deleted and rebuilt;
a folder holding anything we did not write is refused. Examples have their own lengths (a source's tokens, a target's
positions): each is stored unpadded and `batch` pads a training batch to its longest row.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from distill.errors import UserError
from distill.files import write_text_whole
from distill.generation import length_batches

BUILD, MANIFEST = "build.json", "manifest.json"
# how each stored dtype is kept on disk: numpy has no bfloat16, so its bits are kept as int16 and viewed back
STORED = {"float16": (np.float16, None), "bfloat16": (np.int16, torch.bfloat16), "int16": (np.int16, None),
          "int32": (np.int32, None), "float32": (np.float32, None)}

# compute(indices) -> one {field: array (rows, *shape)} per index, the arrays already in their stored dtype
Compute = Callable[[list[int]], list[dict[str, np.ndarray]]]


class CacheError(UserError):
    """A cache folder that cannot be used or written."""


class ExampleCache:
    """The read side of a built cache: `rows(i)`, `get(i)` and padded `batch(indices)`; arrays are memory-mapped."""

    def __init__(self, folder: Path, manifest: dict) -> None:
        self.folder, self.manifest = folder, manifest
        self.fields: dict[str, str] = manifest["fields"]
        self.shard_size: int = manifest["shard_size"]
        self._shards = []
        for name in manifest["shards"]:
            arrays = {f: np.load(folder / name / f"{f}.npy", mmap_mode="r") for f in [*self.fields, "offsets"]}
            self._shards.append(arrays)
        self._offsets = [np.asarray(s["offsets"]) for s in self._shards]

    def __len__(self) -> int:
        return int(self.manifest["examples"])

    @property
    def bytes(self) -> int:
        return int(self.manifest["bytes"])

    def rows(self, i: int) -> int:
        offsets = self._offsets[i // self.shard_size]
        j = i % self.shard_size
        return int(offsets[j + 1] - offsets[j])

    def get(self, i: int) -> dict[str, torch.Tensor]:
        """Example i's arrays as tensors of their stored dtype (bfloat16 viewed back from its bits)."""
        shard, j = self._shards[i // self.shard_size], i % self.shard_size
        offsets = self._offsets[i // self.shard_size]
        start, end = int(offsets[j]), int(offsets[j + 1])
        out = {}
        for field, dtype in self.fields.items():
            tensor = torch.from_numpy(np.array(shard[field][start:end]))
            view = STORED[dtype][1]
            out[field] = tensor.view(view) if view is not None else tensor
        return out

    def batch(self, indices: Sequence[int], length: int, pad: dict[str, float]) -> dict[str, torch.Tensor]:
        """Examples `indices` right-padded (with `pad[field]`) to `length` rows: each field (B, length, *shape).

        `length` is the batch's padded length, which the caller knows from its own tensors; an example longer than it
        is a cache that does not belong to the batch (CacheError).
        """
        items = [self.get(int(i)) for i in indices]
        out = {}
        for field in self.fields:
            first = items[0][field]
            padded = torch.full((len(items), length, *first.shape[1:]), pad.get(field, 0), dtype=first.dtype)
            for row, item in enumerate(items):
                value = item[field]
                if value.shape[0] > length:
                    raise CacheError(f"{self.folder}: example {indices[row]} has {value.shape[0]} cached rows, the "
                                     f"batch only {length}: the cache belongs to other data. Delete the folder to "
                                     "rebuild it.")
                padded[row, :value.shape[0]] = value
            out[field] = padded
        return out


def open_cache(folder: Path, fingerprint: dict) -> ExampleCache | None:
    """The cache in `folder` when it is complete and made for `fingerprint`; None otherwise."""
    manifest = _read_json(folder / MANIFEST)
    if manifest is None or manifest.get("fingerprint") != _plain(fingerprint):
        return None
    return ExampleCache(folder, manifest)


def build_cache(folder: Path, fingerprint: dict, lengths: Sequence[int], fields: dict[str, str], compute: Compute,
                shard_size: int = 4096, batch_rows: int = 16384, what: str = "cache") -> ExampleCache:
    """Open the cache of `fingerprint` in `folder`, computing what is missing first.

    `lengths[i]` is example i's row count (its padded cost), `fields` maps each field to its stored dtype (a key of
    STORED), `compute` returns the arrays of a list of indices; it is called with batches of examples of similar length
    holding about `batch_rows` rows each (padded), so that little of its work is padding.
    """
    folder = Path(folder)
    cache = open_cache(folder, fingerprint)
    if cache is not None:
        print(f"{what}: {folder} matches (same weights, data and settings), {_size(cache.bytes)}", file=sys.stderr)
        return cache
    bad = sorted(set(fields.values()) - set(STORED))
    if bad:
        raise CacheError(f"{what}: unknown stored dtypes {bad}; use one of {sorted(STORED)}.")
    fingerprint = _plain(fingerprint)
    _prepare(folder, fingerprint, what)
    n = len(lengths)
    names = [f"shard-{s:05d}" for s in range(0, max(1, (n + shard_size - 1) // shard_size))]
    for number, name in enumerate(names):
        if (folder / name / "offsets.npy").is_file():
            continue  # complete: shards are renamed into place only once written whole
        start = number * shard_size
        indices = list(range(start, min(n, start + shard_size)))
        print(f"{what}: {name} ({number + 1}/{len(names)}, examples {start}-{start + len(indices) - 1})",
              file=sys.stderr, flush=True)
        _write_shard(folder, name, indices, lengths, fields, compute, batch_rows)
    total = sum(f.stat().st_size for name in names for f in (folder / name).iterdir())
    manifest = {"fingerprint": fingerprint, "examples": n, "shard_size": shard_size, "shards": names,
                "fields": fields, "bytes": total}
    write_text_whole(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    print(f"{what}: wrote {folder}, {n} examples, {_size(total)}", file=sys.stderr)
    return ExampleCache(folder, manifest)


def _write_shard(folder: Path, name: str, indices: list[int], lengths: Sequence[int], fields: dict[str, str],
                 compute: Compute, batch_rows: int) -> None:
    results: dict[int, dict[str, np.ndarray]] = {}
    for positions in length_batches([lengths[i] for i in indices], max_tokens=batch_rows):
        batch = [indices[p] for p in positions]
        for i, arrays in zip(batch, compute(batch), strict=True):
            results[i] = arrays
    offsets = np.zeros(len(indices) + 1, dtype=np.int64)
    for j, i in enumerate(indices):
        offsets[j + 1] = offsets[j] + results[i][next(iter(fields))].shape[0]
    tmp = folder / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for field, dtype in fields.items():
        stored = STORED[dtype][0]
        parts = [results[i][field] for i in indices]
        wrong = [i for i, part in zip(indices, parts, strict=True) if part.dtype != stored]
        if wrong:
            raise CacheError(f"computed {field} of example {wrong[0]} is {parts[0].dtype}, not {dtype}'s {stored}")
        np.save(tmp / f"{field}.npy", np.concatenate(parts) if parts else np.zeros((0,), stored))
    np.save(tmp / "offsets.npy", offsets)  # last: a shard folder holding offsets.npy is whole
    os.replace(tmp, folder / name)


def _prepare(folder: Path, fingerprint: dict, what: str) -> None:
    """Keep an interrupted build of the same fingerprint; empty a cache of another; refuse a folder not ours."""
    if folder.exists() and not folder.is_dir():
        raise CacheError(f"{what}: {folder} is a file; give a folder for the cache.")
    if folder.is_dir() and any(folder.iterdir()):
        build = _read_json(folder / BUILD)
        if build is None:
            names = sorted(p.name for p in folder.iterdir())[:5]
            raise CacheError(f"{what}: {folder} holds files that are not a cache of ours ({', '.join(names)}); give "
                             "an empty or new folder.")
        if build.get("fingerprint") == fingerprint:
            print(f"{what}: resuming the build in {folder}", file=sys.stderr)
            return
        print(f"{what}: {folder} was built from other weights, data or settings: rebuilding", file=sys.stderr)
        for path in folder.iterdir():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    write_text_whole(folder / BUILD, json.dumps({"fingerprint": fingerprint}, indent=2) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _plain(fingerprint: dict) -> dict:
    """The fingerprint as JSON reads it back (tuples become lists), so that comparisons with a file hold."""
    return json.loads(json.dumps(fingerprint))


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def weights_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's state (names, dtypes, shapes, values): what a cache computed with it depends on."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        value = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)};".encode())
        digest.update(value.view(torch.uint8).numpy().tobytes() if value.numel() else b"")
    return digest.hexdigest()


def ids_sha256(*sequences: Sequence[Sequence[int]]) -> str:
    """sha256 of lists of token-id lists (each list's length included): the tokenized data a cache belongs to."""
    import hashlib

    digest = hashlib.sha256()
    for rows in sequences:
        digest.update(f"{len(rows)};".encode())
        for ids in rows:
            digest.update(np.asarray(ids, dtype=np.int64).tobytes() + b"|")
    return digest.hexdigest()
