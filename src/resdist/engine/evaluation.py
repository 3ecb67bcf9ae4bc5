"""Scoring a resdist checkpoint on a data set: ``resdist eval`` and the demo's teacher row."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..config import ConfigError, DataConfig
from ..data.eval_data import EvalData, contract_for_settings, eval_data
from .checkpoint import load_checkpoint
from .metrics import evaluate


@dataclass(frozen=True)
class CheckpointScore:
    """What :func:`evaluate_checkpoint` measured: top-1/top-5 (%), mean loss and image count."""

    model_name: str
    data_name: str
    split: str
    top1: float
    top5: float
    loss: float
    samples: int
    preprocessing: str = ""  # what the images went through (EvalData.describe())

    def line(self) -> str:
        return (f"{self.model_name} on {self.data_name} {self.split} ({self.samples} images): "
                f"top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  loss {self.loss:.4f}")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    download: bool = False,
    batch_size: int | None = None,
    limit_test: int | None = None,
    overrides: Sequence[str] = (),
    split: str = "test",
    device: str = "auto",
    model: str | None = None,
) -> CheckpointScore:
    """Score ``checkpoint`` on the full test set (or ``split="val"``) of the data set its
    input contract names, prepared as the contract says (:func:`resdist.data.eval_data.
    eval_data`: image size, resize, interpolation, mean/std, classes, data folder), unless
    ``data``/``data_dir``/``overrides`` (``data.key=value``) say otherwise. A checkpoint saved
    from your own loop with a contract is scored exactly like one ``train`` wrote.

    With ``model`` (a registry name), ``checkpoint`` is a plain state dict of that network
    instead (a torchvision ResNet's, say, as ``--teacher-weights`` takes): it is built for the
    data's classes and channels (``model.stem`` etc. from ``overrides``) and scored on
    ``data``, which must then be given.

    Raises:
        ConfigError: a state dict without ``data``, or a bad override.
        DataError: the data cannot be prepared as the contract says, or does not fit it.
        CheckpointError: the file is not a readable resdist checkpoint.
    """
    from .distributed import DistInfo, resolve_device

    dev = resolve_device(device, DistInfo(), key="device")  # before the file is read
    if model is not None:
        return _evaluate_state_dict(checkpoint, model, data=data, data_dir=data_dir,
                                    download=download, batch_size=batch_size,
                                    limit_test=limit_test, overrides=overrides, device=dev)
    ckpt = load_checkpoint(checkpoint)
    contract = ckpt.require_contract()
    base: DataConfig | str | None = data
    if ckpt.config:  # the run's folder, limits and validation split, when the data set is its
        run = ckpt.run_config().data
        if not data or data == run.name:
            base = replace(run, limit_test=None)  # the full test set, whatever the run scored
    prepared = eval_data(contract, data=base, data_dir=data_dir, download=download,
                         batch_size=batch_size, limit=limit_test, overrides=overrides,
                         split=split, device=dev)
    net = ckpt.build_model().to(dev)
    return _score(ckpt.model_name, net, prepared)


def _score(name: str, net: nn.Module, prepared: EvalData) -> CheckpointScore:
    m = evaluate(net, prepared.loader)
    return CheckpointScore(name, prepared.data.name, prepared.split, m["top1"], m["top5"],
                           m["loss"], int(m["samples"]), prepared.describe())


def _evaluate_state_dict(path, name: str, *, data, data_dir, download, batch_size, limit_test,
                         overrides, device: torch.device) -> CheckpointScore:
    from ..config import Config
    from ..models.pretrained import load_torchvision_weights
    from .build import build_model

    if not data:
        raise ConfigError(f"a state dict records no data set: pass --data NAME to score {path}")
    cfg = Config()
    cfg.data.name, cfg.model.name = data, name
    cfg.override(list(overrides))
    cfg.validate()
    contract = contract_for_settings(cfg.data)
    prepared = eval_data(contract, data=cfg.data, data_dir=data_dir, download=download,
                         batch_size=batch_size, limit=limit_test, device=device)
    net, _ = build_model(cfg.model, prepared.num_classes, contract.input_shape[0])
    load_torchvision_weights(net, name, str(path))
    return _score(name, net.to(device), prepared)
