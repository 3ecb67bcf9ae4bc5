"""Build the networks and the training objective a :class:`~resdist.config.Config` describes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from ..config import Config, ConfigError, DistillConfig, ModelConfig, TeacherConfig
from ..distill import CrossEntropy, FeatureKD, HintonKD, Objective, ResidualDistiller
from ..models import StageMismatchError, create_model, student_name_for, teacher_name_for
from ..models.pretrained import WeightsError, is_weights_file, load_torchvision_weights
from ..models.timm_adapter import is_timm_name
from .checkpoint import Checkpoint, NotACheckpointError, load_checkpoint

TEACHER_METHODS = ("kd", "feature-kd", "jointrd")


def model_kwargs(cfg: ModelConfig, num_classes: int, in_chans: int) -> dict[str, Any]:
    """Builder keyword arguments for the configured student/model."""
    kw: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans}
    if cfg.stem is not None:
        kw["stem"] = cfg.stem
    if cfg.width_mult is not None:
        kw["width_mult"] = cfg.width_mult
    if cfg.param != "plain":
        kw[cfg.param] = True  # dirac=True or repvgg=True
    if cfg.keep_downsample_shortcuts:
        kw["keep_downsample_shortcuts"] = True
    return kw


def teacher_kwargs(student_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The teacher shares the student's classes, channels, stem and width, with shortcuts."""
    return {k: v for k, v in student_kwargs.items()
            if k not in ("dirac", "repvgg", "keep_downsample_shortcuts", "shortcuts")}


def build_model(cfg: ModelConfig, num_classes: int, in_chans: int) -> tuple[nn.Module, dict]:
    """The network being trained, and the kwargs that rebuild it from a checkpoint."""
    kw = model_kwargs(cfg, num_classes, in_chans)
    if cfg.weights and is_timm_name(cfg.name) and not is_weights_file(cfg.weights):
        return create_model(cfg.name, **kw, pretrained=cfg.weights), kw
    model = create_model(cfg.name, **kw)
    if cfg.weights:
        load_torchvision_weights(model, cfg.name, cfg.weights)
    return model, kw


def build_teacher(
    cfg: TeacherConfig, student_name: str, student_kwargs: dict[str, Any],
    needs_shortcuts: bool = False,
) -> tuple[nn.Module, str]:
    """Build the teacher and load its weights; returns the model and where they came from.

    Sources, in order: a resdist checkpoint, published weights (torchvision's by name such as
    ``DEFAULT``; timm's by tag such as ``a1_in1k`` for a ``timm:ARCH`` teacher), a state-dict
    file, or none (allowed only when the teacher is co-trained). A checkpoint
    must have the data's classes and input channels and, with ``needs_shortcuts`` (JointRD),
    hold a ResNet.
    """
    if cfg.checkpoint:
        ckpt = _load_teacher_checkpoint(cfg.checkpoint)
        if cfg.name and cfg.name != ckpt.model_name:
            raise ConfigError(
                f"teacher checkpoint {cfg.checkpoint} holds {ckpt.model_name}, not the teacher "
                f"{cfg.name} the config names: drop --teacher or teacher.name (a checkpoint "
                f"names its own network) or pass a {cfg.name} run's checkpoint"
            )
        want, got = student_kwargs["num_classes"], ckpt.num_classes
        if got is not None and got != want:
            raise WeightsError(
                f"teacher checkpoint {cfg.checkpoint} has {got} classes, the data has {want}"
            )
        chans = ckpt.in_chans if ckpt.in_chans is not None else (
            ckpt.input_shape[0] if ckpt.input_shape else None)
        if chans is not None and chans != student_kwargs["in_chans"]:
            raise WeightsError(
                f"teacher checkpoint {cfg.checkpoint} takes {chans}-channel images, the data has "
                f"{student_kwargs['in_chans']}: train the teacher on this data set"
            )
        if needs_shortcuts and not ckpt.shortcuts:
            raise WeightsError(
                f"teacher checkpoint {cfg.checkpoint} holds {ckpt.model_name}, a network without "
                "shortcuts; JointRD's teacher must be a ResNet (train one with --model "
                f"{teacher_name_for(ckpt.model_name)})"
            )
        return ckpt.build_model(), f"checkpoint {cfg.checkpoint} ({ckpt.model_name})"
    name = cfg.name or teacher_name_for(student_name)
    kw = teacher_kwargs(student_kwargs)
    if cfg.weights and is_timm_name(name) and not is_weights_file(cfg.weights):
        return create_model(name, **kw, pretrained=cfg.weights), f"timm weights {cfg.weights}"
    teacher = create_model(name, **kw)
    if cfg.weights:
        load_torchvision_weights(teacher, name, cfg.weights)  # a file path or a torchvision name
        return teacher, f"weights {cfg.weights}"
    if not cfg.train:
        raise ConfigError(
            "this method needs a trained teacher: pass --teacher-checkpoint (a resdist run) or "
            "--teacher-weights (torchvision name or state-dict file), or co-train it with "
            "--set teacher.train=true"
        )
    return teacher, "random init (co-trained)"


def _load_teacher_checkpoint(path: str) -> Checkpoint:
    """The resdist checkpoint ``--teacher-checkpoint`` names; a state-dict file given there is
    refused with the flags that take it."""
    fix = (f"pass it as --teacher-weights {path} and name its architecture with --teacher "
           "(e.g. --teacher timm:resnet18 for a timm model, resnet18 for a torchvision one)")
    if path.endswith(".safetensors"):
        raise WeightsError(f"{path} is a safetensors state dict, not a resdist checkpoint "
                           f"(--teacher-checkpoint takes a resdist run's last.pth/best.pth): {fix}")
    try:
        return load_checkpoint(path)
    except NotACheckpointError as e:
        raise WeightsError(f"{e}; if it holds a state dict, {fix}") from e


def _layout_hint(error: StageMismatchError, cfg: Config, teacher_name: str) -> ConfigError:
    """The stage mismatch of student and teacher, with the plain student that fits."""
    fits = student_name_for(teacher_name)
    hint = (f"train --model {fits}, the teacher's plain counterpart" if fits and fits !=
            cfg.model.name else "pick a teacher with the student's stage layout (`resdist "
            "models` lists the pairs: resnetN and plainN)")
    return ConfigError(f"the student {cfg.model.name} does not fit the teacher {teacher_name}: "
                       f"{error}; {hint}")


def build_objective(
    cfg: DistillConfig,
    student: nn.Module,
    teacher: nn.Module | None,
    *,
    train_teacher: bool = False,
    input_shape: Sequence[int] | None = None,
) -> Objective:
    """The objective for ``cfg.method``: ce, kd, feature-kd or jointrd."""
    if cfg.method == "ce":
        return CrossEntropy(student)
    if teacher is None:
        raise ConfigError(f"method {cfg.method!r} needs a teacher")
    if cfg.method == "kd":
        return HintonKD(teacher, student, cfg.kd_alpha, cfg.kd_temperature)
    if cfg.method == "feature-kd":
        return FeatureKD(teacher, student, cfg.feature_weight)
    if cfg.method == "jointrd":
        return ResidualDistiller(
            teacher, student, dc=cfg.dc, decay_fraction=cfg.decay_fraction,
            feature_weight=cfg.feature_weight, path_loss=cfg.path_loss, kd_alpha=cfg.kd_alpha,
            kd_temperature=cfg.kd_temperature, train_teacher=train_teacher,
            input_shape=input_shape,
        )
    raise ConfigError(f"unknown method {cfg.method!r}")


def init_from(student: nn.Module, teacher: nn.Module) -> int:
    """Copy every teacher tensor whose name and shape match into the student; returns count."""
    own = student.state_dict()
    copied = {k: v for k, v in teacher.state_dict().items()
              if k in own and own[k].shape == v.shape}
    student.load_state_dict(copied, strict=False)
    return len(copied)


def build_all(cfg: Config, num_classes: int, in_chans: int, input_shape: Sequence[int]):
    """Student/model, optional teacher and the objective for a run."""
    model, kw = build_model(cfg.model, num_classes, in_chans)
    teacher, source = None, None
    if cfg.distill.method in TEACHER_METHODS:
        teacher, source = build_teacher(cfg.teacher, cfg.model.name, kw,
                                        needs_shortcuts=cfg.distill.method == "jointrd")
        if cfg.model.init_from_teacher:
            init_from(model, teacher)
    try:
        objective = build_objective(
            cfg.distill, model, teacher, train_teacher=cfg.teacher.train, input_shape=input_shape
        )
    except StageMismatchError as e:
        name = cfg.teacher.checkpoint or cfg.teacher.name or teacher_name_for(cfg.model.name)
        raise _layout_hint(e, cfg, name) from e
    return model, kw, teacher, source, objective
