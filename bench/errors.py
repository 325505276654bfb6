"""The error of a bench that cannot run."""

from __future__ import annotations

from distill.errors import UserError


class BenchError(UserError):
    """Something `make bench` needs and does not have, or a conversion step that failed."""
