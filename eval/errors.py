"""The errors of an evaluation run: one that cannot finish, and one that finished with a failed quality gate."""

from __future__ import annotations

from distill.errors import UserError


class EvalError(UserError):
    """A run that cannot finish (a worker failed); the message says which variant."""


class GateFailed(EvalError):
    """The run finished and wrote its report, but a variant lost more than its margin; the message names each."""
