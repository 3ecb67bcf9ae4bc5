"""One way to keep a third-party tool's chatter off the console (the ONNX exporter, the INT8
quantiser): progress prints, warnings and log lines go nowhere, failures still raise."""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Silence stdout, stderr, warnings and the named loggers (``""``: the root logger) while
    the block runs; the loggers' levels are restored afterwards.

    Args:
        loggers: names of the loggers the tool writes to.
    """
    chosen = [logging.getLogger(name) for name in loggers]
    levels = [lg.level for lg in chosen]
    try:
        for lg in chosen:
            lg.setLevel(logging.CRITICAL)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(chosen, levels):
            lg.setLevel(level)
