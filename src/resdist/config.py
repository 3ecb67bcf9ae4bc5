"""Run configuration: dataclasses <-> YAML, with ``--set section.key=value`` overrides.

A run is fully described by one :class:`Config`; the engine saves it as ``config.yaml`` beside
its checkpoints, and ``resdist train --config that.yaml`` re-runs it.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ResdistError


class ConfigError(ResdistError, ValueError):
    """A configuration key or value is invalid (the message names it)."""


DATASETS = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
METHODS = ("ce", "kd", "feature-kd", "jointrd")
PATH_LOSSES = ("ce", "kd")
SCHEDULES = ("multistep", "step", "cosine", "onecycle", "constant")
AMP_MODES = ("bf16", "fp16", "auto")
STEMS = ("imagenet", "cifar", "deep")
STUDENT_PARAMS = ("plain", "dirac", "repvgg")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
NORMALIZATIONS = ("imagenet", "dataset")
TRAIN_CROPS = ("random-resized", "pad-crop")
#: the kinds of device resdist trains and scores on (``torch.device`` parses more: meta, xla, ...)
DEVICE_TYPES = ("cpu", "cuda", "mps")
#: the largest float32: optimiser settings beyond it overflow the float32 weights they scale
FLOAT32_MAX = 3.4028234663852886e38


def check_choice(
    key: str, value: Any, allowed: Sequence[Any], what: str,
    error: type[Exception] = ConfigError,
) -> None:
    """Raise ``error`` unless ``value`` is one of ``allowed``; the message names ``key``, the
    kind of thing (``what``) and the valid values."""
    if value not in allowed:
        raise error(f"unknown {what} {key}={value!r}; choose one of {', '.join(map(str, allowed))}")


def check_device(key: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` is ``auto`` or names a device resdist runs
    on (``cpu``, ``cuda``, ``cuda:N``, ``mps``); whether that device is present is checked
    when the run starts."""
    import torch

    fix = "use auto, cpu, cuda, cuda:N or mps"
    if value == "auto":
        return
    try:
        kind = torch.device(value).type if isinstance(value, str) else None
    except (RuntimeError, ValueError):
        kind = None
    if kind is None:
        raise ConfigError(f"{key}={value!r} is not a device; {fix}")
    if kind not in DEVICE_TYPES:
        raise ConfigError(f"{key}={value!r}: resdist does not train or score on {kind} "
                          f"devices; {fix}")


def check_range(
    key: str,
    value: float | None,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
    error: type[Exception] = ConfigError,
) -> None:
    """Raise ``error`` unless ``value`` is a finite number with ``low <= value`` (``low <
    value`` if ``low_open``) and, when given, ``value <= high`` (``<`` if ``high_open``);
    ``None`` passes when ``optional`` (it then means "all" or "default")."""
    if value is None and optional:
        return
    ok = isinstance(value, numbers.Real) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low)
    ok = ok and (high is None or (value < high if high_open else value <= high))
    if ok:
        return
    if high is None:
        bound = f"must be {'>' if low_open else '>='} {low:g}"
    else:
        bound = (f"must lie in {'(' if low_open else '['}{low:g}, {high:g}"
                 f"{')' if high_open else ']'}")
    raise error(f"{key} {bound}{' (or null)' if optional else ''}, got {value}")


def check_distill_settings(
    dc: float, decay_fraction: float, feature_weight: float, path_loss: str, prefix: str = "",
    error: type[Exception] = ConfigError,
) -> None:
    """The ranges of the distillation settings (:class:`DistillConfig`'s and
    :class:`~resdist.distill.ResidualDistiller`'s arguments); keys are ``prefix + name``."""
    check_range(f"{prefix}dc", dc, 0.0, 1.0, error=error)
    check_range(f"{prefix}decay_fraction", decay_fraction, 0.0, 1.0, low_open=True, error=error)
    check_range(f"{prefix}feature_weight", feature_weight, 0.0, error=error)
    check_choice(f"{prefix}path_loss", path_loss, PATH_LOSSES, "path loss", error)


@dataclass
class DataConfig:
    """Where the images come from and how they are batched and augmented."""

    name: str = "fashion-mnist"
    data_dir: str | None = None  # None: the data set's default location
    download: bool = False  # fetch through torchvision when the files are missing (needs network)
    batch_size: int = 128  # per process; the global batch is batch_size * world size
    eval_batch_size: int = 512
    limit_train: int | None = None  # use only the first N training images
    limit_test: int | None = None
    val_split: float = 0.0  # held out of the training set: a fraction (<1) or a count (>=1)
    augment: bool = True
    crop_padding: int | None = None  # random-crop padding; None: 4 for CIFAR, 2 for Fashion-MNIST
    hflip: bool = True
    image_size: int = 224  # ImageFolder network input (training crop and eval centre crop)
    # ImageFolder preprocessing (docs/training.md "Your own images"): eval resizes the shorter
    # side to `resize` (None: image_size / crop_pct) and centre-crops image_size
    crop_pct: float = 0.875  # 1.0: no crop margin, for images already at the network's size
    resize: int | None = None
    interpolation: str = "bilinear"  # bilinear | bicubic | nearest
    normalization: str = "imagenet"  # imagenet | dataset (mean/std of the training folder)
    mean: list[float] | None = None  # explicit per-channel mean/std, [0, 1] units (overrides;
    # any data set: how an input contract's statistics are applied)
    std: list[float] | None = None
    train_crop: str = "random-resized"  # random-resized | pad-crop (small images)
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])  # random-resized
    num_workers: int | None = None  # ImageFolder DataLoader workers; None: the cores, at most 4
    in_memory: bool = True  # Fashion-MNIST/CIFAR/synthetic: keep the set as one device tensor
    synthetic_samples: int = 512
    synthetic_classes: int = 10
    synthetic_size: int = 32
    synthetic_channels: int = 3
    skip_bad_images: bool = False  # ImageFolder: leave out unreadable/empty files (else an error)

    def check(self, error: type[Exception] = ConfigError) -> None:
        """Check the data set name and the sizes; raise ``error`` naming the key."""
        check_choice("data.name", self.name, DATASETS, "data set", error)
        for key in ("batch_size", "eval_batch_size"):
            check_range(f"data.{key}", getattr(self, key), 1, error=error)
        for key in ("limit_train", "limit_test"):
            check_range(f"data.{key}", getattr(self, key), 1, optional=True, error=error)
        check_range("data.crop_padding", self.crop_padding, 0, optional=True, error=error)
        check_range("data.val_split", self.val_split, 0, error=error)
        check_range("data.num_workers", self.num_workers, 0, optional=True, error=error)
        check_range("data.image_size", self.image_size, 1, error=error)
        check_range("data.crop_pct", self.crop_pct, 0, 1, low_open=True, error=error)
        check_range("data.resize", self.resize, self.image_size, optional=True, error=error)
        check_choice("data.interpolation", self.interpolation, INTERPOLATIONS, "interpolation",
                     error)
        check_choice("data.normalization", self.normalization, NORMALIZATIONS, "normalization",
                     error)
        check_choice("data.train_crop", self.train_crop, TRAIN_CROPS, "training crop", error)
        if len(self.crop_scale) != 2 or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise error(f"data.crop_scale must be [low, high] with 0 < low <= high <= 1, got "
                        f"{self.crop_scale}")
        if (self.mean is None) != (self.std is None):
            raise error("data.mean and data.std go together: give both or neither")
        if self.mean is not None and self.std is not None:
            if len(self.mean) != len(self.std) or min(self.std) <= 0:
                raise error(f"data.mean and data.std need one value per channel and std > 0, "
                            f"got {self.mean}, {self.std}")
            for value in (*self.mean, *self.std):
                check_range("data.mean/std", value, -1e6, 1e6, error=error)
        check_range("data.synthetic_samples", self.synthetic_samples, 1, error=error)
        check_range("data.synthetic_classes", self.synthetic_classes, 2, error=error)
        check_range("data.synthetic_size", self.synthetic_size, 1, error=error)
        check_range("data.synthetic_channels", self.synthetic_channels, 1, error=error)


@dataclass
class ModelConfig:
    """The network being trained (the student for distillation methods)."""

    name: str = "plain56"
    stem: str | None = None  # None: the builder's default ("cifar" for thin nets)
    width_mult: float | None = None  # thin CIFAR ResNets only
    dirac: bool = False  # Dirac-parametrised block convs (plain students); = student_param dirac
    keep_downsample_shortcuts: bool = False
    weights: str | None = None  # torchvision weights name or state-dict file
    init_from_teacher: bool = False  # copy the teacher's matching tensors into the student
    student_param: str = "plain"  # how the student's convs train: plain | dirac | repvgg

    @property
    def param(self) -> str:
        """The training-time parametrisation of the convs: ``student_param``, or ``"dirac"``
        when the older switch ``dirac`` is on."""
        return "dirac" if self.dirac else self.student_param

    def check(self) -> None:
        """Check ``student_param`` and that it agrees with ``dirac``."""
        check_choice("model.student_param", self.student_param, STUDENT_PARAMS,
                     "student parametrisation")
        if self.dirac and self.student_param not in ("plain", "dirac"):
            raise ConfigError(f"model.dirac=true and model.student_param={self.student_param} "
                              "name two parametrisations: drop --dirac (it means "
                              "--student-param dirac)")


@dataclass
class TeacherConfig:
    """The ResNet that guides a plain student (methods kd, feature-kd, jointrd)."""

    name: str | None = None  # None: the student's ResNet counterpart (plain56 -> resnet56)
    checkpoint: str | None = None  # a resdist checkpoint
    weights: str | None = None  # torchvision weights name ("DEFAULT") or state-dict file
    train: bool = False  # co-train the teacher (the released code's JOINT mode) instead of freezing

    def check(self) -> None:
        """Check that at most one source of weights is named."""
        if self.checkpoint and self.weights:
            raise ConfigError(
                f"teacher.checkpoint ({self.checkpoint}) and teacher.weights ({self.weights}) "
                "name two teachers: pass one of --teacher-checkpoint and --teacher-weights"
            )


@dataclass
class DistillConfig:
    """The training objective. Defaults are the released CIFAR values (docs/method.md section 3)."""

    method: str = "ce"  # ce | kd | feature-kd | jointrd
    dc: float = 0.5  # floor of the decay factor m(e)
    decay_fraction: float = 0.3  # m(e) decays over this fraction of the run (60 of 200 epochs)
    feature_weight: float = 1e-3  # lambda; 0 turns the margin feature loss off
    kd_alpha: float = 0.9
    kd_temperature: float = 4.0
    path_loss: str = "ce"  # loss on the mixed paths: "ce" or "kd" (Hinton KD)

    def check(self) -> None:
        """Check the method name and the ranges; raise :class:`ConfigError` naming the key."""
        check_choice("distill.method", self.method, METHODS, "method")
        check_distill_settings(self.dc, self.decay_fraction, self.feature_weight, self.path_loss,
                               prefix="distill.")
        check_range("distill.kd_alpha", self.kd_alpha, 0, 1)
        check_range("distill.kd_temperature", self.kd_temperature, 0, low_open=True)


@dataclass
class OptimConfig:
    """SGD with Nesterov momentum and a learning-rate schedule."""

    lr: float = 0.1  # for the global batch
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "multistep"  # multistep | step | cosine | onecycle | constant
    milestones: list[float] = field(default_factory=lambda: [0.5, 0.75])  # fractions of the run
    gamma: float = 0.1
    step_size: int = 30  # epochs, for schedule "step"
    warmup_epochs: float = 0.0


@dataclass
class TrainConfig:
    """The loop: length, device, precision, logging and checkpoints."""

    epochs: int = 200
    seed: int = 0
    out: str = "runs/default"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str | None = None  # None | bf16 | fp16 | auto (CUDA: bf16 if supported, else fp16)
    channels_last: bool = False
    compile: bool = False
    sync_bn: bool = False
    progress: bool = True
    tensorboard: bool = True  # when tensorboard is installed
    eval_every: int = 1
    save_best: bool = True  # also keep best.pth (highest val/test top-1) beside last.pth
    best_weights_only: bool = False  # best.pth without optimiser/RNG state (smaller; no resume)
    log_every: int = 50  # optimiser steps between per-step loss/LR rows (steps.jsonl); 0: none
    resume: bool = False  # continue the run in `out` from its last.pth
    overwrite: bool = False  # move a run already in `out` aside to `out`.old-<time>, start anew
    accum_steps: int = 1  # micro-batches per optimiser step (gradient accumulation)
    check_every: int = 50  # steps between host syncs: finiteness check, progress bar refresh
    dist_timeout_min: float = 60.0  # how long DDP collectives wait for the other ranks


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> Config:
        """Check every enumerated value and range; raise :class:`ConfigError` naming the key.

        Runs before anything is built or written, so a bad value costs no training time.
        """
        d, m, o, t = self.data, self.model, self.optim, self.train
        d.check()
        m.check()
        self.teacher.check()
        self.distill.check()
        if m.stem is not None:
            check_choice("model.stem", m.stem, STEMS, "stem")
        check_range("model.width_mult", m.width_mult, 0, low_open=True, optional=True)
        check_choice("optim.schedule", o.schedule, SCHEDULES, "schedule")
        # the optimiser multiplies float32 weights by these: larger values cannot be represented
        check_range("optim.lr", o.lr, 0, FLOAT32_MAX, low_open=True)
        check_range("optim.momentum", o.momentum, 0, 1, high_open=True)
        check_range("optim.weight_decay", o.weight_decay, 0, FLOAT32_MAX)
        check_range("optim.gamma", o.gamma, 0, low_open=True)
        check_range("optim.step_size", o.step_size, 1)
        check_range("optim.warmup_epochs", o.warmup_epochs, 0)
        for value in o.milestones:
            check_range("optim.milestones", value, 0)
        if o.nesterov and o.momentum == 0:
            raise ConfigError("optim.nesterov needs optim.momentum > 0 (or set optim.nesterov=false)")
        if t.amp is not None:
            check_choice("train.amp", t.amp, AMP_MODES, "precision")
        check_range("train.epochs", t.epochs, 1)
        check_range("train.seed", t.seed, 0, 2**32 - 1)
        check_range("train.eval_every", t.eval_every, 1)
        check_range("train.accum_steps", t.accum_steps, 1)
        check_range("train.check_every", t.check_every, 1)
        check_range("train.log_every", t.log_every, 0)
        check_range("train.dist_timeout_min", t.dist_timeout_min, 0, low_open=True)
        if not t.out:
            raise ConfigError("train.out (--out) must name a run directory")
        check_device("train.device", t.device)
        if t.resume and t.overwrite:
            raise ConfigError("train.resume and train.overwrite exclude each other: --resume "
                              "continues the run in --out, --overwrite replaces it")
        return self

    # --- YAML -----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Config:
        cfg = cls()
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"a config must be a mapping of sections ({', '.join(_sections(cfg))}"
                              f"), got a {type(d).__name__}")
        for section, values in (d or {}).items():
            if section not in _sections(cfg):
                raise ConfigError(
                    f"unknown config section {section!r} (valid: {', '.join(_sections(cfg))})"
                )
            if values is None:
                continue
            if not isinstance(values, dict):
                raise ConfigError(f"config section {section!r} must be a mapping")
            for key, value in values.items():
                _set(cfg, f"{section}.{key}", value)
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        if Path(path).exists() and not (Path(path).is_file() or Path(path).is_dir()):
            raise ConfigError(f"config file {path} is not a regular file (a pipe or a device); "
                              "pass a YAML file")
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror}") from e
        except UnicodeDecodeError:
            raise ConfigError(f"config file {path} is not text (not UTF-8): pass a YAML "
                              "file") from None
        try:
            return cls.from_dict(yaml.safe_load(text))
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            what = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise ConfigError(f"config file {path} is not valid YAML{where}: {what}") from e

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    def override(self, assignments: list[str]) -> Config:
        """Apply ``section.key=value`` strings (values parsed as YAML scalars)."""
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"override {item!r} is not of the form section.key=value")
            key, raw = item.split("=", 1)
            try:
                value = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as e:
                what = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise ConfigError(f"override {item!r}: the value is not valid YAML ({what}); "
                                  "quote it or fix it") from e
            _set(self, key.strip(), value)
        return self


def _sections(cfg: Config) -> list[str]:
    return [f.name for f in dataclasses.fields(cfg)]


def _set(cfg: Config, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    if len(parts) != 2 or parts[0] not in _sections(cfg):
        raise ConfigError(
            f"unknown config key {dotted!r} (keys look like section.key; sections: "
            f"{', '.join(_sections(cfg))})"
        )
    section = getattr(cfg, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise ConfigError(
            f"unknown config key {dotted!r}; {parts[0]} has: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(type(section))
    setattr(section, parts[1], _coerce(dotted, value, hints[parts[1]]))


def _coerce(key: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            value = [value]
        return [_coerce(key, v, inner) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key} must be a string, got {value!r}")
    return value


#: Config keys that say where files are or how the run is watched, not what it computes: left
#: out when two runs' settings are compared (``--resume``, the suites' run records).
PLACE_KEYS = {("train", "out"), ("train", "resume"), ("train", "overwrite"),
              ("train", "progress"), ("train", "tensorboard"), ("train", "check_every"),
              ("train", "dist_timeout_min"), ("teacher", "checkpoint"), ("data", "data_dir"),
              ("data", "download"), ("data", "num_workers"), ("train", "save_best"),
              ("train", "best_weights_only"), ("train", "log_every")}


def settings(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` (a :meth:`Config.to_dict`) without :data:`PLACE_KEYS`: what the run computes."""
    return {section: {k: v for k, v in values.items() if (section, k) not in PLACE_KEYS}
            for section, values in config.items()}
