"""The errors a user can fix, and how every command-line entry point reports them.

Library code raises `UserError` (or a subclass) with a message that names the problem and the fix; it never exits.
Each CLI wraps its `main` in `cli_errors`, which prints such an error as one `prog: error: ...` line on stderr and
exits with status 2 (argparse's status for bad usage), so a caller of the library can still catch it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """A problem the user must fix: a missing folder, a bad option, a model of another family, a failed check."""


class ModelError(UserError):
    """A model, tokenizer or checkpoint that cannot be used as given."""


class DataError(UserError):
    """A dataset that cannot be read as given."""


@contextmanager
def cli_errors(prog: str) -> Iterator[None]:
    """Turn a `UserError` raised inside the block into one line on stderr and exit status 2."""
    try:
        yield
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
