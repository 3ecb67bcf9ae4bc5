"""The flush-denormal mode is remembered, and a block that flushes puts back what it found."""

from __future__ import annotations

import pytest
import torch

from resdist.engine.denormals import flush_denormal, flushing_denormals, set_flush_denormal

pytestmark = pytest.mark.skipif(not set_flush_denormal(False),
                                reason="this CPU cannot flush denormals")


def flushes() -> bool:
    """What the CPU does now: a denormal float32 times one is zero when flushing."""
    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0


@pytest.mark.parametrize("before", [True, False])
def test_flush_denormal_restores_the_previous_mode(before):
    try:
        set_flush_denormal(before)
        assert flushes() is before and flushing_denormals() is before
        with flush_denormal(True):
            assert flushes() and flushing_denormals()
        assert flushes() is before and flushing_denormals() is before
    finally:
        set_flush_denormal(False)

