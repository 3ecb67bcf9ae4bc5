"""The one exception type the models package raises for user errors."""

from __future__ import annotations

from ..errors import ResdistError


class ModelError(ResdistError, ValueError):
    """A network cannot be built, adapted or folded as asked (the message says why)."""
