"""Reading ``.pth`` files without running code: ``torch.load(..., weights_only=True)`` only.

A pickle can carry instructions that run arbitrary code when it is loaded. PyTorch's
``weights_only`` unpickler accepts only tensors, plain containers and numbers; resdist reads
every checkpoint, teacher file and state dict through :func:`load_torch_file`, so a file with
anything else is refused with one line, and nothing in it runs.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from .errors import ResdistError


class UnsafeFileError(ResdistError, ValueError):
    """A ``.pth`` file holds code or objects that weights-only loading does not allow."""


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)``.

    Raises:
        UnsafeFileError: the file's pickle holds code or objects other than tensors, plain
            containers and numbers (resdist does not execute it).
        Exception: whatever ``torch.load`` raises for an unreadable or corrupt file.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        text = str(e)
        # "Unsupported operand": bytes that are no pickle at all (a corrupt file), not a payload
        if "Weights only load failed" not in text or "Unsupported operand" in text:
            raise
        raise UnsafeFileError(
            f"{os.fspath(path)} contains code or objects that are not allowed in a checkpoint "
            "(only tensors, numbers and plain containers are); resdist will not execute it. "
            "Use a file written by resdist or a plain state dict from a source you trust"
        ) from None
