"""Scoring a resdist checkpoint on a data set: ``resdist eval`` and the demo's teacher row."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..config import ConfigError, DataConfig
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

    def line(self) -> str:
        return (f"{self.model_name} on {self.data_name} {self.split} ({self.samples} images): "
                f"top-1 {self.top1:.2f}%  top-5 {self.top5:.2f}%  loss {self.loss:.4f}")


def apply_eval_args(data: DataConfig, *, data_dir: str | None = None,
                    download: bool | None = None, batch_size: int | None = None,
                    limit_test: int | None = None) -> DataConfig:
    """Set the data options every evaluation takes (``--data-dir``, ``--download``,
    ``--batch-size``, ``--limit-test``) on ``data``, leaving those not given as they are;
    returns ``data``."""
    if data_dir:
        data.data_dir = data_dir
    if download:
        data.download = True
    if batch_size is not None:
        data.eval_batch_size = batch_size
    if limit_test is not None:
        data.limit_test = limit_test
    return data


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
    """Score ``checkpoint`` on the full test set (or ``split="val"``) of the data set its config
    names, unless ``data``/``data_dir``/``overrides`` (``section.key=value``) say otherwise.

    With ``model`` (a registry name), ``checkpoint`` is a plain state dict of that network
    instead (a torchvision ResNet's, say, as ``--teacher-weights`` takes): it is built for the
    data's classes and channels (``model.stem`` etc. from ``overrides``) and scored on
    ``data``, which must then be given.

    Raises:
        ConfigError: no validation split, the data set's class count differs, or a state dict
            without ``data``.
        CheckpointError: the file is not a readable resdist checkpoint.
    """
    from ..data import build_data
    from .distributed import DistInfo, resolve_device

    if model is not None:
        return _evaluate_state_dict(checkpoint, model, data=data, data_dir=data_dir,
                                    download=download, batch_size=batch_size,
                                    limit_test=limit_test, overrides=overrides, device=device)
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.run_config()
    if data:
        cfg.data.name = data
    cfg.data.limit_test = None  # the full test set, whatever the training run scored
    apply_eval_args(cfg.data, data_dir=data_dir, download=download, batch_size=batch_size,
                    limit_test=limit_test)
    cfg.override(list(overrides))
    if split == "test":
        cfg.data.val_split = 0.0
    elif not cfg.data.val_split:
        raise ConfigError("no validation split in this checkpoint's config (data.val_split = 0);"
                          " evaluate --split test, or --set data.val_split=...")
    cfg.validate()
    dev = resolve_device(device, DistInfo())
    bundle = build_data(cfg.data, device=dev, seed=cfg.train.seed)
    model = ckpt.build_model().to(dev)
    want = ckpt.num_classes
    if want is not None and want != bundle.num_classes:
        raise ConfigError(f"checkpoint has {want} classes, data set {cfg.data.name!r} has "
                          f"{bundle.num_classes}")
    m = evaluate(model, bundle.test if split == "test" else bundle.val)
    return CheckpointScore(ckpt.model_name, cfg.data.name, split, m["top1"], m["top5"],
                           m["loss"], int(m["samples"]))


def _evaluate_state_dict(path, name: str, *, data, data_dir, download, batch_size, limit_test,
                         overrides, device) -> CheckpointScore:
    from ..config import Config
    from ..data import build_data
    from ..models.pretrained import load_torchvision_weights
    from .build import build_model
    from .distributed import DistInfo, resolve_device

    if not data:
        raise ConfigError(f"a state dict records no data set: pass --data NAME to score {path}")
    cfg = Config()
    cfg.data.name, cfg.model.name, cfg.data.batch_size = data, name, 1
    apply_eval_args(cfg.data, data_dir=data_dir, download=download, batch_size=batch_size,
                    limit_test=limit_test)
    cfg.override(list(overrides))
    cfg.validate()
    dev = resolve_device(device, DistInfo())
    bundle = build_data(cfg.data, device=dev, seed=cfg.train.seed)
    net, _ = build_model(cfg.model, bundle.num_classes, bundle.in_chans)
    load_torchvision_weights(net, name, str(path))
    m = evaluate(net.to(dev), bundle.test)
    return CheckpointScore(name, cfg.data.name, "test", m["top1"], m["top5"], m["loss"],
                           int(m["samples"]))
