"""Output folders appear whole or not at all, and replace only a folder that one of our commands wrote.

A command builds its output in a staging folder (`staged_dir`): `new/` inside a hidden sibling of `out`,
`.<name>.staging.<host>.<pid>.<random>`, on the same file system so that it can be renamed into place. `replace_dir`
then swaps it with `out` in one step. An existing `out` is replaced only when it is provably ours:

- with a manifest (`python -m export`'s export_meta.json, `python -m publish`'s publish_manifest.json): the manifest
  lists under "files" every other file with its size and sha256, and the folder holds nothing else and nothing
  changed since (a listed file that is missing loses nothing);
- without one (the distill writers: models, datasets, tokenizers): the folder holds only plain files of the kinds
  they write, one of them train_meta.json, distill_meta.json or manifest.json, or tokenizer files alone.

Anything else (a user's files, a git checkout, a model folder, an `export_meta.json` of `{}`) is refused with
`OutputError`, naming a few of the files in the way. An empty folder may be used.

A killed run never leaves a folder that looks complete: the staging folder is removed on the way out, and what a
process killed outright (SIGKILL runs no `finally`) left is swept by the next command writing the same `out`, once the
process named in it is gone.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from distill.errors import UserError

FILES_KEY = "files"  # in a manifest: {relative path: {"bytes": int, "sha256": str}} of every other file
OUR_META_FILES = ("train_meta.json", "distill_meta.json", "manifest.json")  # what marks a model or dataset of ours
TOKENIZER_NAMES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "spiece.model", "sentencepiece.bpe.model")
OUR_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".safetensors", ".model")  # what the distill writers put in a folder
SHOWN = 5  # names quoted in a refusal
_NEW, _OLD = "new", "old"  # inside a staging folder: what is built, and (where no atomic swap exists) what it replaces


class OutputError(UserError):
    """An output folder that cannot be written, or that holds something the command did not write; left alone."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_manifest(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, dict[str, Any]]:
    """{relative path: {"bytes", "sha256"}} of every file under `folder` but the top-level names in `skip`."""
    folder = Path(folder)
    return {rel: {"bytes": (folder / rel).stat().st_size, "sha256": sha256_file(folder / rel)}
            for rel in sorted(_walk(folder)[0]) if rel not in skip}


def _walk(folder: Path, stop: Callable[[str], bool] | None = None) -> tuple[list[str], list[str]]:
    """(plain files, anything else: symlinks, sockets, folders that cannot be read) under `folder` as relative posix
    paths; empty folders count for nothing. Stops early once `stop(path)` has been true SHOWN times."""
    files: list[str] = []
    others: list[str] = []
    hits = 0

    def unreadable(error: OSError) -> None:
        others.append(Path(error.filename).relative_to(folder).as_posix() + "/ (unreadable)")

    for root, dirs, names in os.walk(folder, onerror=unreadable):
        base = Path(root)
        for name in [*dirs, *names]:
            path = base / name
            rel = path.relative_to(folder).as_posix()
            if path.is_symlink() or not (path.is_file() or path.is_dir()):
                others.append(rel)
            elif path.is_file():
                files.append(rel)
            else:
                continue
            if stop is not None and stop(rel):
                hits += 1
                if hits >= SHOWN:
                    return files, others
        dirs[:] = [d for d in dirs if not (base / d).is_symlink()]
    return files, others


def _few(names: list[str]) -> str:
    shown = ", ".join(names[:SHOWN])
    return shown + (f" and {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _top_level(out: Path) -> list[str]:
    return sorted(p.name + ("/" if p.is_dir() and not p.is_symlink() else "") for p in out.iterdir())


def _resolved(out: Path | str) -> Path:
    return Path(out).expanduser().resolve()


def _listed(out: Path, manifest: str, files_key: str) -> dict[str, dict[str, Any]] | None:
    """The manifest's file list, None when it is missing, unreadable or of another shape."""
    try:
        listed = json.loads((out / manifest).read_text()).get(files_key)
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None
    if not isinstance(listed, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
            for v in listed.values()):
        return None
    return listed


def _manifest_problem(out: Path, manifest: str, files_key: str, hashes: bool = True) -> str | None:
    """Why `out` is not exactly what its manifest lists (None: it is)."""
    if not (out / manifest).is_file() or (out / manifest).is_symlink():
        return f"it holds no {manifest} ({_few(_top_level(out))})"
    listed = _listed(out, manifest, files_key)
    if listed is None:
        beside = [name for name in _top_level(out) if name != manifest]
        return (f"its {manifest} lists no {files_key!r} with sizes and sha256 (written by hand, by another program or "
                "by an older version of this command)" + (f", beside {_few(beside)}" if beside else ""))
    files, others = _walk(out, stop=lambda rel: rel != manifest and rel not in listed)
    unexpected = sorted({*others, *(rel for rel in files if rel != manifest and rel not in listed)})
    if unexpected:
        return f"it holds files its {manifest} does not list: {_few(unexpected)}"
    changed = [rel for rel in files if rel in listed and (out / rel).stat().st_size != listed[rel]["bytes"]]
    if not changed and hashes:
        changed = [rel for rel in files if rel in listed and sha256_file(out / rel) != listed[rel]["sha256"]]
    if changed:
        return f"files changed since it was written: {_few(sorted(changed))}"
    return None


def _distill_problem(out: Path) -> str | None:
    """Why `out` is not a model, dataset or tokenizer folder of the distill writers (None: it is)."""
    entries = sorted(out.iterdir())
    odd = [p.name + ("/" if p.is_dir() else "") for p in entries
           if p.name.startswith(".") or p.is_symlink() or not p.is_file() or not p.name.endswith(OUR_SUFFIXES)]
    if odd:
        return f"it holds what none of this project's commands writes there: {_few(odd)}"
    names = [p.name for p in entries]
    if not any(name in OUR_META_FILES for name in names) and not all(name in TOKENIZER_NAMES for name in names):
        return f"it holds none of {', '.join(OUR_META_FILES)} ({_few(names)})"
    return None


def in_the_way(out: Path | str, manifest: str | None = None, files_key: str = FILES_KEY) -> str | None:
    """Why a command may not replace the existing `out` (None: it may): what is in the way, as a clause.

    `manifest`: the file in which the command lists what it wrote (see the module docstring); None: the rule for the
    distill writers' folders.
    """
    out = _resolved(out)
    if not out.exists():
        return None
    if not out.is_dir():
        return "it is a file, not a folder"
    try:
        if not any(out.iterdir()):
            return None
        return _manifest_problem(out, manifest, files_key) if manifest else _distill_problem(out)
    except OSError as error:
        return f"it cannot be read ({error.strerror})"


def _unwritable(out: Path) -> str | None:
    """Why `out` cannot be created or renamed into place (None: it can), as a clause."""
    cwd = Path.cwd().resolve()
    if cwd == out or out in cwd.parents:
        return ("it is the current folder (or holds it), and the command replaces its output folder as a whole: give "
                "a new folder inside it")
    if not out.name:
        return "it is the file system's root"
    existing = next(p for p in (out.parent, *out.parent.parents) if os.path.lexists(p) or p == p.parent)
    if not existing.is_dir():
        return f"it lies under {existing}, which is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def _read_input(out: Path, inputs: Iterable[Path | str | None]) -> str | None:
    """Why `out` would replace what the command reads (None: it would not): it is one of `inputs` (local paths; a hub
    id names no local path) or holds one."""
    for given in inputs:
        if given is None or not str(given).strip() or not os.path.lexists(Path(given).expanduser()):
            continue
        source = _resolved(given)
        if source == out or out in source.parents:
            held = "is" if source == out else "holds"
            return f"it {held} {source}, which this command reads: writing there would replace its own input"
    return None


def check_output(out: Path | str, manifest: str | None = None, what: str | None = None,
                 files_key: str = FILES_KEY, error: type[UserError] = OutputError,
                 inputs: Iterable[Path | str | None] = ()) -> None:
    """Raise `error` (a `UserError`) naming the problem and the fix when a command may not write `out`: it holds
    the current folder, it cannot be created, it is (or holds) one of the command's `inputs`, or it exists and
    `in_the_way` refuses it; `what` names what it would have to be (e.g. "an earlier export"). Call it before long
    work, so that a refusal comes first."""
    out = _resolved(out)
    unwritable = _unwritable(out) or _read_input(out, inputs)
    if unwritable is not None:
        raise error(f"cannot write {out}: {unwritable}. Choose another output folder (--out).")
    reason = in_the_way(out, manifest, files_key)
    if reason is not None:
        what = what or (f"a folder whose {manifest} lists what it holds" if manifest else
                        "a folder this project's commands wrote")
        raise error(f"{out} is not {what}: {reason}; it is left as it is. Choose another output folder (--out), "
                    "or move that one away first.")


@functools.cache
def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _staging_prefix(out: Path) -> str:
    return f".{out.name}.staging.{_host()}.{os.getpid()}."


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def sweep_stale(out: Path | str) -> list[Path]:
    """Remove the staging folders that killed runs left beside `out` (this host's, whose process is gone); returns
    them. A run killed between the two renames of a swap (where no atomic swap exists) left `out` in its staging
    folder: it is put back first."""
    out = _resolved(out)
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.staging\.{re.escape(_host())}\.(\d+)\.[A-Za-z0-9_]+")
    swept = []
    for entry in sorted(out.parent.iterdir()):
        match = pattern.fullmatch(entry.name)
        if match is None or entry.is_symlink() or not entry.is_dir() or _alive(int(match.group(1))):
            continue
        if (entry / _OLD).is_dir() and not os.path.lexists(out):
            os.rename(entry / _OLD, out)
        shutil.rmtree(entry, ignore_errors=True)
        swept.append(entry)
    return swept


@contextmanager
def staged_dir(out: Path | str) -> Iterator[Path]:
    """A new empty folder to build `out` in, on its file system; it and its staging folder are removed on exit
    (after `replace_dir`, what remains there is the replaced folder). Sweeps killed runs' leftovers first."""
    out = _resolved(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out)
        staging = Path(tempfile.mkdtemp(prefix=_staging_prefix(out), dir=out.parent))
    except OSError as error:
        raise OutputError(f"cannot write beside {out} ({error.strerror}: {error.filename}); choose an output "
                          "folder (--out) in a folder you can write to.") from None
    try:
        (staging / _NEW).mkdir()
        yield staging / _NEW
    finally:
        if (staging / _OLD).is_dir() and not os.path.lexists(out):  # a swap interrupted between its two renames
            os.rename(staging / _OLD, out)
        shutil.rmtree(staging, ignore_errors=True)


@functools.cache
def _renameat2() -> Any:
    if sys.platform != "linux":
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc older than 2.28, or another C library
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one step (Linux renameat2 RENAME_EXCHANGE); False where the system cannot."""
    at_fdcwd, rename_exchange = -100, 2
    function = _renameat2()
    if function is None:
        return False
    if function(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap(new: Path, out: Path) -> None:
    """Put `new` (inside its staging folder) at `out`; what was at `out` goes into the staging folder."""
    if not os.path.lexists(out):
        os.rename(new, out)
    elif not _exchange(new, out):
        old = new.parent / _OLD
        os.rename(out, old)
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old, out)
            raise


def replace_dir(staged: Path, out: Path, manifest: str | None = None, what: str | None = None,
                files_key: str = FILES_KEY) -> Path:
    """Put the finished folder `staged` at `out` in one step, replacing what was there only when `check_output`
    allows it (`manifest`, `what`: see there); returns `out` (resolved).

    `staged` is best built in `staged_dir(out)`; from anywhere else it is first moved into such a staging folder (a
    copy when it lies on another file system). A crash at any point leaves the old folder or the new one at `out`.
    """
    out, staged = _resolved(out), _resolved(staged)
    if manifest is not None and (problem := _manifest_problem(staged, manifest, files_key, hashes=False)):
        raise ValueError(f"replace_dir: the staged folder {staged} would not be replaceable later: {problem}")
    check_output(out, manifest, what, files_key)
    staging = staged.parent
    if staged.name == _NEW and staging.name.startswith(_staging_prefix(out)) and staging.parent == out.parent:
        _swap(staged, out)
        return out
    with staged_dir(out) as new:
        new.rmdir()
        shutil.move(str(staged), new)
        _swap(new, out)
    return out


def write_text_whole(path: Path, text: str) -> None:
    """Write a text file whole or not at all: an interrupted run leaves the earlier file, not half of a new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def package_version(package: str) -> str | None:
    """The installed version of a distribution (`rouge-score`, `optimum-onnx`), None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
