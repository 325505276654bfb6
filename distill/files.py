"""Output folders appear whole or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def replace_dir(staged: Path, out: Path) -> Path:
    """Move the finished folder `staged` to `out`, replacing what was there.

    `staged` is first moved next to `out` (a copy when it lies on another file system), then renamed into place, so a
    crash at any point leaves either the old folder or the new one, never a half-written one.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    sibling = Path(tempfile.mkdtemp(prefix=f".{out.name}.new.", dir=out.parent))
    sibling.rmdir()
    shutil.move(str(staged), sibling)
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
        old.rmdir()
        os.rename(out, old)
        os.rename(sibling, out)
        shutil.rmtree(old)
    else:
        os.rename(sibling, out)
    return out


def package_version(package: str) -> str | None:
    """The installed version of a distribution (`rouge-score`, `optimum-onnx`), None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None
