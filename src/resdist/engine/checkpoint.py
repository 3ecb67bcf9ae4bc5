"""Checkpoints: written atomically, self-describing enough to rebuild the model.

A checkpoint is a dict with keys ``model`` (state dict of the trained network, the student for
distillation), ``model_name`` and ``model_kwargs`` (to rebuild it with
:func:`resdist.models.create_model`), ``input_shape`` ``(C, H, W)``, ``input_contract`` (what
the model expects as input: a :class:`resdist.data.contract.InputContract` as plain lists,
strings and numbers), ``epoch`` (completed epochs), ``config`` (the run's config as a dict),
``metrics`` (last evaluation) and, for resuming, ``optimizer``, ``scheduler``, ``objective``
(trainable parts besides the model, e.g. connectors), ``scaler`` and ``rng``.

Everything in it is a tensor, a number, a string or a plain list/dict (the RNG states too), so
any resdist checkpoint loads with ``torch.load(path, weights_only=True)``, and resdist loads
nothing any other way (:mod:`resdist.safe_load`).
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_failure
from ..errors import ResdistError
from ..models import create_model
from ..safe_load import UnsafeFileError, load_torch_file


class CheckpointError(ResdistError, ValueError):
    """A checkpoint file is missing, unreadable or not a resdist checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename).

    On any failure the temporary file is removed and an existing ``path`` stays as it was.

    Raises:
        CheckpointError: the file cannot be written (disk full, permission denied, ...).
    """
    path = Path(path)
    try:
        # through a Python file: a full disk is then an OSError, not torch's C++ writer's
        # RuntimeError that names no cause
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(state, f)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        raise CheckpointError(f"cannot write {path}: {reason}") from e
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a resdist checkpoint, raising :class:`CheckpointError` with a clear message."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = load_torch_file(path, map_location=map_location)
    except UnsafeFileError:
        raise
    except Exception as e:
        reason = _first_line(e)
        if isinstance(e, pickle.UnpicklingError) or not reason or reason.isdigit():
            reason = "not a PyTorch file, or corrupt"  # e.g. a bare KeyError of a byte value
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise CheckpointError(f"{path} is not a resdist checkpoint (no model/model_name keys)")
    return ckpt


def model_from_checkpoint(
    path: str | os.PathLike | dict, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the trained network stored in a checkpoint (a path or an already loaded dict)."""
    ckpt = path if isinstance(path, dict) else load_checkpoint(path, map_location)
    model = create_model(ckpt["model_name"], **ckpt.get("model_kwargs", {}))
    load_weights(model, ckpt["model"], f"checkpoint ({ckpt['model_name']})")
    return model


def load_weights(model: nn.Module, state: dict[str, Any], source: str, strict: bool = True):
    """``model.load_state_dict(state)``, with a mismatch reported as one line.

    Raises:
        CheckpointError: a tensor is missing, unexpected or of another shape than the model's.
    """
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        if len(detail) > 300:
            detail = detail[:300] + " ..."
        raise CheckpointError(
            f"the weights of {source} do not fit {type(model).__name__}: {detail}"
        ) from e


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and the current CUDA device's) RNG states as plain data:
    lists, numbers, strings and tensors only, so the checkpoint loads with
    ``weights_only=True``."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss),
                  float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (the CUDA state only where CUDA is available)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.cpu().numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())
