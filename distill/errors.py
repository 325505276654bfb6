"""The errors a user can fix, and how every command-line entry point reports them.

Library code raises `UserError` (or a subclass) with a message that names the problem and the fix; it never exits.
Each CLI wraps its `main` in `cli_errors`, which prints such an error as one `prog: error: ...` line on stderr and
exits with status 2 (argparse's status for bad usage), so a caller of the library can still catch it. Ctrl-C is
one line too (status 130, the shell's for SIGINT): the writers' staging folders are removed on the way out, so nothing
half-written is left.
"""

from __future__ import annotations

import argparse
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
    """Turn a `UserError` raised inside the block into one line on stderr and exit status 2, and Ctrl-C
    (KeyboardInterrupt) into one line and status 130."""
    try:
        yield
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C); outputs not yet complete were not written", file=sys.stderr)
        raise SystemExit(130) from None


def at_least_one(text: str) -> int:
    """argparse type of a count that must be >= 1 (0 would mean nothing or, for a limit, silently everything)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value
