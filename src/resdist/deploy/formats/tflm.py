"""TFLite Micro: the microcontroller interpreter of a ``.tflite`` file (``resdist[tflm]``).

A microcontroller gives the interpreter one fixed block of RAM, the tensor arena, for every
activation and the interpreter's own bookkeeping; the smallest arena a model runs in is the
figure an embedded engineer budgets. :func:`tflm_arena` finds it with the ``tflite-micro``
package's Python interpreter (the same C++ allocator as on the board): the interpreter is
built and run once per candidate size, halving the interval until it is 16 bytes wide. The
``.tflite`` is the one ``resdist export --format tflite --quantize int8`` writes.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DeployError, require
from .common import first_line
from .litert import sniff

__all__ = ["TflmArena", "tflm_arena"]

_ALIGN = 16  # TFLite Micro aligns arena allocations to 16 bytes
_LARGEST = 1 << 28  # 256 MiB: far above any microcontroller's RAM


@dataclass(frozen=True)
class TflmArena:
    """The smallest tensor arena a ``.tflite`` runs in under TFLite Micro.

    Attributes:
        arena_bytes: the smallest arena (to 16 bytes) in which the model was built and run.
        model_bytes: the size of the ``.tflite`` file (weights live in flash, not the arena).
        version: the ``tflite-micro`` package that measured it.
    """

    arena_bytes: int
    model_bytes: int
    version: str


@contextlib.contextmanager
def _native_stderr_quiet() -> Iterator[None]:
    """Silence what the C++ allocator prints to the process's stderr for each refused size."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _runs(runtime: Any, path: Path, size: int) -> bool:
    """Whether the model is built and invoked in an arena of ``size`` bytes."""
    try:
        interpreter = runtime.Interpreter.from_file(str(path), arena_size=size)
        detail = interpreter.get_input_details(0)
        interpreter.set_input(np.zeros(detail["shape"], dtype=detail["dtype"]), 0)
        interpreter.invoke()
    except Exception:  # the interpreter raises several types for a refused size or model
        return False
    return True


def tflm_arena(path: str | os.PathLike) -> TflmArena:
    """The smallest tensor arena in which TFLite Micro runs the ``.tflite`` at ``path``.

    Raises:
        DeployError: ``tflite-micro`` is not installed (the line names the extra), or the model
            does not run under TFLite Micro at any size (an operator it lacks, a float model
            on a build without float kernels): the interpreter's first line is given.
    """
    require("tflite_micro")
    from tflite_micro.python.tflite_micro import runtime

    try:
        from importlib.metadata import version

        package = version("tflite-micro")
    except Exception:  # a source build without metadata
        package = "unknown"
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"no such .tflite file: {path}")
    if not sniff(path):
        raise DeployError(f"{path} is not a .tflite model (no TFL3 flatbuffer identifier); "
                          "export one with resdist export --format tflite --quantize int8")
    high = max(_ALIGN, path.stat().st_size)
    with _native_stderr_quiet():
        while not _runs(runtime, path, high):
            if high >= _LARGEST:
                break
            high *= 2
        else:
            low = 0
            while high - low > _ALIGN:
                mid = (low + high) // 2
                if _runs(runtime, path, mid):
                    high = mid
                else:
                    low = mid
            return TflmArena(high, path.stat().st_size, package)
    try:  # say why, outside the quiet block
        runtime.Interpreter.from_file(str(path), arena_size=_LARGEST).invoke()
    except Exception as e:
        reason = first_line(e)
    else:
        reason = "it failed on a zero input"
    raise DeployError(f"TFLite Micro cannot run {path}: {reason}; export an INT8 model "
                      "(resdist export --format tflite --quantize int8)")
