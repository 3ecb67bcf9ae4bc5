"""The one exception type the data package raises for user errors."""

from __future__ import annotations

from ..errors import ResdistError


class DataError(ResdistError, RuntimeError):
    """Data cannot be found, read or split as asked (the message says which file and why)."""
