"""Checkpoints: one typed record, :class:`Checkpoint`, owns the file format.

A checkpoint file is a dict with keys ``model`` (state dict of the trained network, the student
for distillation), ``model_name`` and ``model_kwargs`` (to rebuild it with
:func:`resdist.models.create_model`), ``input_contract`` (what the model expects as input: a
:class:`resdist.data.contract.InputContract` as plain lists, strings and numbers), ``epoch``
(completed epochs), ``config`` (the run's config as a dict), ``metrics`` (last evaluation) and,
for resuming, ``optimizer``, ``scheduler``, ``objective`` (trainable parts besides the model,
e.g. connectors), ``scaler`` and ``rng``. Files of older resdist versions carry ``input_shape``
instead of a contract; theirs is derived from the config.

Everything in it is a tensor, a number, a string or a plain list/dict (the RNG states too), so
any resdist checkpoint loads with ``torch.load(path, weights_only=True)``, and resdist loads
nothing any other way (:mod:`resdist.safe_load`). Every field is checked when the file is read
(types, ranges, agreement of the contract with the model), so a file from a stranger is refused
in one line naming the field instead of failing later. Nothing outside this module reads or
writes the raw dict.

Saving a model trained in your own loop, so that ``resdist eval``/``export``/``predict`` apply::

    from resdist.data.contract import contract_for_data
    ckpt = Checkpoint("plain20", {"num_classes": 10, "in_chans": 1}, model.state_dict(),
                      contract=contract_for_data("fashion-mnist"))
    ckpt.save("plain20.pth")
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_failure
from ..config import Config, ConfigError
from ..data.contract import InputContract, contract_for_data
from ..data.errors import DataError
from ..errors import ResdistError
from ..models import create_model, is_model
from ..models.errors import ModelError
from ..models.registry import check_model_kwargs
from ..safe_load import UnsafeFileError, load_torch_file, read_failure, special_file

__all__ = ["Checkpoint", "CheckpointError", "NotACheckpointError", "check_state_like",
           "load_checkpoint",
           "load_weights", "model_from_checkpoint", "rng_state", "save_checkpoint",
           "set_rng_state"]


class CheckpointError(ResdistError, ValueError):
    """A checkpoint file is missing, unreadable or not a resdist checkpoint."""


class NotACheckpointError(CheckpointError):
    """The file is readable but holds something else than a resdist checkpoint (a bare state
    dict, for instance)."""


#: the training-state fields (resuming only): plain dicts of torch's own ``state_dict()`` forms
TRAINING_FIELDS = ("objective", "optimizer", "scheduler", "scaler", "rng")


@dataclass
class Checkpoint:
    """A trained network and what is needed to rebuild, feed and resume it.

    Attributes:
        model_name: a registered model name (``resdist models`` lists them).
        model_kwargs: builder arguments, e.g. ``num_classes``, ``in_chans``, ``width_mult``.
        state_dict: the network's weights.
        contract: what the network takes as input (None only for files that record none).
        epoch: completed training epochs.
        config: the run's :class:`~resdist.config.Config` as a dict (None outside a run).
        metrics: the last evaluation (``test_top1``, ...).
        objective, optimizer, scheduler, scaler, rng: training state for ``--resume``.
    """

    model_name: str
    model_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    contract: InputContract | None = None
    epoch: int = 0
    config: dict[str, Any] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    objective: dict[str, Any] | None = None
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    scaler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    source: str = field(default="checkpoint", compare=False, repr=False)

    def __post_init__(self) -> None:
        self._check()

    # --- the file format ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The dict ``torch.save`` writes: plain containers, numbers, strings and tensors."""
        d: dict[str, Any] = {
            "model": self.state_dict, "model_name": self.model_name,
            "model_kwargs": dict(self.model_kwargs),
            "input_contract": self.contract.to_dict() if self.contract is not None else None,
            "epoch": self.epoch, "config": self.config, "metrics": self.metrics,
        }
        d.update({k: getattr(self, k) for k in TRAINING_FIELDS if getattr(self, k) is not None})
        return d

    @classmethod
    def from_dict(cls, d: Any, source: str = "checkpoint") -> Checkpoint:
        """Check every field of a loaded file and build the record.

        Raises:
            CheckpointError: naming ``source``, the field and what it must be.
        """
        if not isinstance(d, dict) or "model" not in d or "model_name" not in d:
            raise NotACheckpointError(f"{source} is not a resdist checkpoint (no model/"
                                      "model_name keys)")
        kw = d.get("model_kwargs") or {}
        contract = d.get("input_contract")
        if contract is not None:
            try:
                contract = InputContract.from_dict(contract)
            except DataError as e:
                raise CheckpointError(f"{source}: {e}") from e
        metrics = d.get("metrics")
        fields_ = {k: d.get(k) for k in TRAINING_FIELDS}
        ckpt = cls(d["model_name"], kw, d["model"], contract, d.get("epoch", 0), d.get("config"),
                   {} if metrics is None else metrics, **fields_, source=source)
        if ckpt.contract is None:
            ckpt.contract = _legacy_contract(ckpt, d.get("input_shape"))
        return ckpt

    def _check(self) -> None:
        src = self.source

        def bad(what: str) -> CheckpointError:
            return CheckpointError(f"{src}: {what}; it was not written by resdist, or is damaged")

        if not isinstance(self.model_name, str) or not is_model(self.model_name):
            raise bad(f"model_name {self.model_name!r} is not a model resdist builds")
        if not isinstance(self.model_kwargs, dict) or not all(
                isinstance(k, str) for k in self.model_kwargs):
            raise bad(f"model_kwargs must be a mapping of names, got {self.model_kwargs!r}"[:200])
        try:
            check_model_kwargs(self.model_name, self.model_kwargs)
        except ModelError as e:
            raise bad(f"model_kwargs: {e}") from e
        if not isinstance(self.state_dict, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor)
                for k, v in self.state_dict.items()):
            raise bad("model must be a state dict (names -> tensors)")
        for key, tensor in self.state_dict.items():
            if tensor.layout != torch.strided or tensor.is_meta:
                raise bad(f"model weight {key} is not a dense tensor with data "
                          f"({'meta' if tensor.is_meta else tensor.layout})")
            if tensor.is_complex():
                raise bad(f"model weight {key} is complex ({tensor.dtype})")
            if key.endswith("running_var") and tensor.numel() and bool((tensor < 0).any()):
                raise bad(f"BatchNorm statistic {key} holds negative variances")
            if tensor.is_floating_point() and tensor.numel() and not bool(
                    torch.isfinite(tensor).all()):
                raise bad(f"model weight {key} holds NaN or infinite values (a run that "
                          "diverged?)")
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 0:
            raise bad(f"epoch must be a whole number >= 0, got {self.epoch!r}")
        for name in ("config", "metrics", *TRAINING_FIELDS):
            value = getattr(self, name)
            if value is not None and not isinstance(value, dict):
                raise bad(f"{name} must be a mapping, got {type(value).__name__}")
        if self.contract is not None and not isinstance(self.contract, InputContract):
            raise bad("contract must be an InputContract")
        c = self.contract
        if c is not None:
            chans, classes = self.model_kwargs.get("in_chans"), self.model_kwargs.get("num_classes")
            if chans is not None and c.input_shape[0] != chans:
                raise bad(f"the input contract has {c.input_shape[0]} channels, the model "
                          f"{chans}")
            if classes is not None and c.class_names and len(c.class_names) != classes:
                raise bad(f"the input contract names {len(c.class_names)} classes, the model "
                          f"has {classes}")
        if self.rng is not None:
            problem = _rng_problem(self.rng)
            if problem:
                raise bad(f"rng: {problem}")
        for key in ("test_top1", "test_top5", "val_top1"):
            value = self.metrics.get(key) if self.metrics else None
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not math.isfinite(value)):
                raise bad(f"metrics.{key} must be a number, got {value!r}")

    # --- files ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu"
             ) -> Checkpoint:
        """Read and check a checkpoint file (a run folder means its ``last.pth``).

        Raises:
            CheckpointError: missing, unreadable, or a field is wrong (the message names it).
            UnsafeFileError: the file holds code (nothing in it runs).
        """
        path = Path(path)
        if path.is_dir():
            path = path / "last.pth"
        if special_file(path):
            raise CheckpointError(f"{path} is not a regular file (a pipe or a device); pass a "
                                  "checkpoint file (.pth) or its run folder")
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        try:
            raw = load_torch_file(path, map_location=map_location)
        except UnsafeFileError:
            raise
        except Exception as e:
            raise CheckpointError(f"cannot read checkpoint {path}: {read_failure(e)}") from e
        return cls.from_dict(raw, source=str(path))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint to ``path`` atomically (temporary file in the same folder,
        fsync, rename): on any failure an existing ``path`` stays as it was.

        Raises:
            CheckpointError: the file cannot be written (disk full, permission denied, ...).
        """
        path = Path(path)
        try:
            # through a Python file: a full disk is then an OSError, not torch's C++ writer's
            # RuntimeError that names no cause
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(self.to_dict(), f)
        except Exception as e:
            reason = write_failure(e)
            if reason is None:
                raise
            raise CheckpointError(f"cannot write {path}: {reason}") from e
        return path

    # --- what readers ask ---------------------------------------------------------------------
    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of one input image, from the contract."""
        return tuple(self.contract.input_shape) if self.contract is not None else None  # type: ignore[return-value]

    @property
    def num_classes(self) -> int | None:
        return self.model_kwargs.get("num_classes")

    @property
    def in_chans(self) -> int | None:
        return self.model_kwargs.get("in_chans")

    @property
    def shortcuts(self) -> bool:
        """Whether the network has its residual shortcuts (a ResNet, not a plain network)."""
        return not self.model_name.startswith("plain") and self.model_kwargs.get(
            "shortcuts", True)

    def run_config(self) -> Config:
        """The run's config (defaults where the file records none).

        Raises:
            CheckpointError: the recorded config is not a valid resdist config.
        """
        try:
            return Config.from_dict(self.config)
        except ConfigError as e:
            raise CheckpointError(f"{self.source}: its config: {e}") from e

    def require_contract(self) -> InputContract:
        """The contract, or :class:`CheckpointError` saying that the file records none."""
        if self.contract is None:
            raise CheckpointError(f"{self.source} records neither an input contract nor the "
                                  "data set and input shape it was trained on")
        return self.contract

    def build_model(self) -> nn.Module:
        """The trained network, rebuilt and loaded with the stored weights."""
        try:
            model = create_model(self.model_name, **self.model_kwargs)
        except ModelError as e:
            raise CheckpointError(f"{self.source}: {e}") from e
        load_weights(model, self.state_dict, f"{self.source} ({self.model_name})")
        return model

    def weights_only(self) -> Checkpoint:
        """A copy without the training state (optimiser, RNG, ...): a smaller file to share."""
        return dataclasses.replace(self, **dict.fromkeys(TRAINING_FIELDS))


def _legacy_contract(ckpt: Checkpoint, shape: Any) -> InputContract | None:
    """The contract of a file written before contracts were recorded: from the config's data
    set name and the stored ``input_shape``; None when those are missing."""
    data = (ckpt.config or {}).get("data")
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or shape is None:
        return None
    if not (isinstance(shape, list | tuple) and len(shape) == 3 and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
        raise CheckpointError(f"{ckpt.source}: input_shape must be [C, H, W], got {shape!r}"[:200])
    try:
        return contract_for_data(data["name"], in_chans=shape[0], image_size=shape[1],
                                 num_classes=ckpt.num_classes, data_dir=data.get("data_dir"))
    except DataError as e:
        raise CheckpointError(f"{ckpt.source}: {e}") from e


def save_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike) -> Path:
    """``checkpoint.save(path)``: write it atomically."""
    return checkpoint.save(path)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                    ) -> Checkpoint:
    """``Checkpoint.load(path)``: read a resdist checkpoint, every field checked."""
    return Checkpoint.load(path, map_location)


def model_from_checkpoint(
    path: str | os.PathLike | Checkpoint, map_location: str | torch.device = "cpu"
) -> nn.Module:
    """Rebuild the trained network stored in a checkpoint (a path or a loaded record)."""
    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path, map_location)
    return ckpt.build_model()


def load_weights(model: nn.Module, state: dict[str, Any], source: str, strict: bool = True):
    """``model.load_state_dict(state)``, with a mismatch reported as one line.

    Raises:
        CheckpointError: a tensor is missing, unexpected or of another shape than the model's.
    """
    own = model.state_dict()
    for key, tensor in state.items():
        mine = own.get(key)
        if mine is not None and isinstance(tensor, torch.Tensor) and \
                mine.is_floating_point() and not tensor.is_floating_point():
            raise CheckpointError(f"the weights of {source} do not fit {type(model).__name__}: "
                                  f"{key} is {tensor.dtype}, the model keeps {mine.dtype}")
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        detail = " ".join(str(e).split())
        if len(detail) > 300:
            detail = detail[:300] + " ..."
        raise CheckpointError(
            f"the weights of {source} do not fit {type(model).__name__}: {detail}"
        ) from e


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


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _rng_problem(state: dict[str, Any]) -> str | None:
    """What is wrong with a checkpoint's RNG state (the form :func:`rng_state` writes), or
    None."""
    py, npy = state.get("python"), state.get("numpy")
    if not (isinstance(py, list | tuple) and len(py) == 3 and _is_int(py[0])
            and isinstance(py[1], list | tuple) and len(py[1]) == 625
            and all(_is_int(v) and 0 <= v < 2**32 for v in py[1])
            and (py[2] is None or isinstance(py[2], float))):
        return "python must be [version, 625 integers, gauss]"
    if not (isinstance(npy, list | tuple) and len(npy) == 5 and npy[0] == "MT19937"
            and isinstance(npy[1], torch.Tensor) and tuple(npy[1].shape) == (624,)
            and not npy[1].is_floating_point() and _is_int(npy[2]) and 0 <= npy[2] <= 624
            and _is_int(npy[3]) and isinstance(npy[4], int | float)):
        return "numpy must be ['MT19937', 624-integer tensor, pos, has_gauss, cached]"
    for key in ("torch", "cuda"):
        t = state.get(key)
        if (key == "torch" or t is not None) and not (
                isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
            return f"{key} must be a uint8 tensor (torch's generator state)"
    return None


def check_state_like(reference: Any, value: Any, where: str) -> None:
    """Raise :class:`CheckpointError` unless ``value`` has the shape of ``reference`` (a fresh
    optimiser's or scheduler's ``state_dict()``): the same kinds (numbers, finite; bools;
    strings; tensors), lists of the same length, and mappings checked key by key. ``None`` in
    ``reference`` takes anything. Torch loads such state without checking it, and a wrong type
    fails only mid-training; ``where`` names the field in the message."""
    def fail(what: str) -> CheckpointError:
        return CheckpointError(f"{where} {what}, got {value!r}"[:300] + "; the file is damaged "
                               "or was not written by resdist; start anew with --overwrite")

    if reference is None:
        return
    if isinstance(reference, bool):
        if not isinstance(value, bool):
            raise fail("must be true or false")
    elif isinstance(reference, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float) or \
                not math.isfinite(value):
            raise fail("must be a finite number")
    elif isinstance(reference, str):
        if not isinstance(value, str):
            raise fail("must be a string")
    elif isinstance(reference, torch.Tensor):
        if not isinstance(value, torch.Tensor):
            raise fail("must be a tensor")
    elif isinstance(reference, list | tuple):
        if not isinstance(value, list | tuple) or len(value) != len(reference):
            raise fail(f"must be a list of {len(reference)}")
        for i, (r, v) in enumerate(zip(reference, value)):
            check_state_like(r, v, f"{where}[{i}]")
    elif isinstance(reference, dict):
        if not isinstance(value, dict):
            raise fail("must be a mapping")
        for key, r in reference.items():
            if key in value:
                check_state_like(r, value[key], f"{where}.{key}")
