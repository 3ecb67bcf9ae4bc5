"""A check before allocating data: a setting that asks for more memory than the machine has
is one line naming the setting, not an allocator crash minutes later."""

from __future__ import annotations

from ..machine import available_memory, format_bytes
from .errors import DataError


def check_fits(nbytes: int, what: str, fix: str) -> None:
    """Raise :class:`DataError` when ``nbytes`` exceed the memory free now; ``what`` is the
    allocation in words, ``fix`` the setting to change."""
    free = available_memory()
    if free is not None and nbytes > free:
        raise DataError(f"{what} would need {format_bytes(nbytes)}, more than the "
                        f"{format_bytes(free)} of memory free on this machine; {fix}")
