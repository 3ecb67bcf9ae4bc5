"""Flushing denormal floats to zero on the CPU, with the setting remembered.

Deep plain networks at initialisation produce denormal activations, which run many times slower
on x86 CPUs. PyTorch can set the flush-to-zero mode (``torch.set_flush_denormal``) but cannot
read it back, so resdist sets it only through :func:`set_flush_denormal`, which remembers the
value, and :func:`flush_denormal` puts back the remembered value when it ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

_flushing = False


def set_flush_denormal(mode: bool) -> bool:
    """Set the CPU's flush-denormal mode and remember it; returns whether the CPU supports it
    (without support the mode stays off)."""
    global _flushing
    supported = torch.set_flush_denormal(mode)
    _flushing = mode and supported
    return supported


def flushing_denormals() -> bool:
    """The mode last set through :func:`set_flush_denormal` (off at start-up)."""
    return _flushing


@contextmanager
def flush_denormal(mode: bool = True) -> Iterator[None]:
    """Run a block with the flush-denormal mode set to ``mode``, then restore the previous one."""
    previous = _flushing
    set_flush_denormal(mode)
    try:
        yield
    finally:
        set_flush_denormal(previous)
