"""The one exception type the distill package raises for user errors."""

from __future__ import annotations

from ..errors import ResdistError


class DistillError(ResdistError, ValueError):
    """A teacher, student or feature does not fit the distillation asked for (the message says
    which and what to do)."""
