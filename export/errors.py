"""The error an export raises when it cannot be made or fails its check against PyTorch."""

from __future__ import annotations

from distill.errors import UserError


class ExportError(UserError):
    """An export that cannot be made, or whose graphs differ from PyTorch; nothing was written."""
