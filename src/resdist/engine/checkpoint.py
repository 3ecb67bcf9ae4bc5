"""Checkpoints: written atomically, self-describing enough to rebuild the model.

A checkpoint is a dict with keys ``model`` (state dict of the trained network, the student for
distillation), ``model_name`` and ``model_kwargs`` (to rebuild it with
:func:`resdist.models.create_model`), ``input_shape`` ``(C, H, W)``, ``input_contract`` (what
the model expects as input: a :class:`resdist.data.contract.InputContract` as plain lists,
strings and numbers), ``epoch`` (completed epochs), ``config`` (the run's config as a dict),
``metrics`` (last evaluation) and, for resuming, ``optimizer``, ``scheduler``, ``objective``
(trainable parts besides the model, e.g. connectors), ``scaler`` and ``rng``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ResdistError
from ..models import create_model


class CheckpointError(ResdistError, ValueError):
    """A checkpoint file is missing, unreadable or not a resdist checkpoint."""


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read a resdist checkpoint, raising :class:`CheckpointError` with a clear message."""
    path = Path(path)
    if path.is_dir():
        path = path / "last.pth"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise CheckpointError(f"{path} is not a resdist checkpoint (no model/model_name keys)")
    return ckpt


def model_from_checkpoint(
    path: str | os.PathLike | dict, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the trained network stored in a checkpoint (a path or an already loaded dict)."""
    ckpt = path if isinstance(path, dict) else load_checkpoint(path, map_location)
    model = create_model(ckpt["model_name"], **ckpt.get("model_kwargs", {}))
    model.load_state_dict(ckpt["model"])
    return model


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
