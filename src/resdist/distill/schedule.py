"""The decay factor m(e) of the mixed-path losses (docs/method.md section 3)."""

from __future__ import annotations

import math


def decay_factor(epoch: float, decay_epochs: float, dc: float) -> float:
    """``m(e) = dc + (1 - dc) * (1 + cos(pi * e / decay_epochs)) / 2`` for ``e <= decay_epochs``,
    then ``dc``. ``epoch`` may be fractional (progress within an epoch)."""
    if decay_epochs <= 0 or epoch >= decay_epochs:
        return float(dc)
    e = max(0.0, float(epoch))
    return float(dc + (1.0 - dc) * (1.0 + math.cos(math.pi * e / decay_epochs)) / 2.0)
