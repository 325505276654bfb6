"""The error of a release that must not happen."""

from __future__ import annotations

from distill.errors import UserError


class PublishError(UserError):
    """A folder that must not be published, or a push that cannot happen; the message says what to fix."""
