"""Reading ``.pth`` files without running code: ``torch.load(..., weights_only=True)`` only.

A pickle can carry instructions that run arbitrary code when it is loaded. PyTorch's
``weights_only`` unpickler accepts only tensors, plain containers and numbers; resdist reads
every checkpoint, teacher file and state dict through :func:`load_torch_file`, so a file with
anything else is refused with one line, and nothing in it runs.
"""

from __future__ import annotations

import os
import pickle
import warnings
import zipfile
from typing import Any

import torch

from .errors import ResdistError


class UnsafeFileError(ResdistError, ValueError):
    """A ``.pth`` file holds code or objects that weights-only loading does not allow."""


class TorchScriptFileError(UnsafeFileError):
    """A TorchScript archive was given where resdist reads only weights: loading one runs the
    code it carries, so resdist does not load it unless told to trust it."""


def special_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` exists but is neither a regular file nor a folder: a pipe, socket or
    device, whose reading may block for ever (a FIFO) or never end (``/dev/zero``)."""
    return os.path.exists(path) and not (os.path.isfile(path) or os.path.isdir(path))


def is_torchscript(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a TorchScript archive: a zip file with a ``code/`` folder (a
    ``torch.save`` checkpoint has none). Reads the zip's directory only; runs nothing."""
    try:
        if not os.path.isfile(path) or not zipfile.is_zipfile(path):
            return False
        with zipfile.ZipFile(path) as z:
            return any("/code/" in name for name in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def torchscript_extra_file(path: str | os.PathLike, name: str) -> str | None:
    """The text of extra file ``name`` of a TorchScript archive, read from the zip without
    loading the module (loading would run its code); ``None`` if it has no such file."""
    with zipfile.ZipFile(path) as z:
        found = [n for n in z.namelist() if n.split("/", 1)[-1] == f"extra/{name}"]
        return z.read(found[0]).decode("utf-8", errors="replace") if found else None


def refuse_torchscript(path: str | os.PathLike, what: str) -> None:
    """Raise :class:`TorchScriptFileError` if ``path`` is a TorchScript archive; ``what`` says
    what the command takes instead."""
    if is_torchscript(path):
        raise TorchScriptFileError(
            f"{os.fspath(path)} is a TorchScript file; loading one runs the code it carries, so "
            f"resdist does not; {what}")


def load_torchscript(path: str | os.PathLike, *, trusted: bool, what: str) -> Any:
    """``torch.jit.load(path)`` on the CPU, in eval mode, its deprecation warnings quiet.

    Loading runs the code the file carries, so the caller says whether it may: ``trusted`` is a
    user's explicit opt-in (``--trust-torchscript``) or a file resdist has just written itself.

    Raises:
        TorchScriptFileError: ``trusted`` is false (``what`` says what to use instead).
    """
    if not trusted:
        raise TorchScriptFileError(
            f"{os.fspath(path)} is a TorchScript file; loading one runs the code it carries, so "
            f"resdist does not; {what}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(os.fspath(path), map_location="cpu").eval()


def load_torch_file(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, map_location, weights_only=True)``.

    Raises:
        UnsafeFileError: the file's pickle holds code or objects other than tensors, plain
            containers and numbers (resdist does not execute it).
        Exception: whatever ``torch.load`` raises for an unreadable or corrupt file.
    """
    refuse_torchscript(path, "use the run's checkpoint (.pth) or a state-dict file instead")
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": not the user's
            warnings.simplefilter("ignore")
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


def read_failure(e: BaseException) -> str:
    """Why :func:`load_torch_file` could not read a file, in a few words for a one-line
    message: torch's own first line, or ``"not a PyTorch file, or corrupt"`` where that line
    says nothing (a bare byte value of a garbled file, a pickle torch refuses)."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    lines = str(e).strip().splitlines()
    reason = lines[0] if lines else ""
    if isinstance(e, pickle.UnpicklingError) or not reason or reason.isdigit() or \
            len(reason) > 200:
        return "not a PyTorch file, or corrupt"
    return reason
