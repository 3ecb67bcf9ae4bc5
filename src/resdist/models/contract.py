"""The staged contract: what a teacher or student must expose for JointRD and feature KD.

A staged model is a stem, ``num_stages`` stages and a head. Distillation cuts it at stage
boundaries: it runs the student's stem and first ``k`` stages, then the teacher's stages
``k+1 .. S`` and head (a *mixed path*), and compares final pre-ReLU features whose margins come
from the BatchNorm that produces them. :class:`resdist.models.ResNet` follows the contract, and
:func:`resdist.models.from_torchvision` brings torchvision's ResNets under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import ResdistError

__all__ = ["StageMismatchError", "StagedModel", "check_staged", "check_staged_pair", "last_bn_of"]


class StageMismatchError(ResdistError, ValueError):
    """Teacher and student do not line up stage by stage (or do not follow the contract)."""


@runtime_checkable
class StagedModel(Protocol):
    """A network cut into stem, stages and head.

    Attributes:
        stem: the module before the first stage.
        stages: the stages, in order (``len(stages) == num_stages``).
        head: pooling and classifier after the last stage.
        num_stages: ``S``, the number of stages.
        stage_channels: output channels of each stage (``S`` entries).
    """

    num_stages: int
    stage_channels: Sequence[int]

    @property
    def stem(self) -> nn.Module: ...

    @property
    def stages(self) -> Sequence[nn.Module]: ...

    @property
    def head(self) -> nn.Module: ...

    def forward_stem(self, x: Tensor) -> Tensor:
        """The stem's output for images ``x`` of shape ``(N, C, H, W)``."""
        ...

    def forward_stages(
        self, x: Tensor, start: int = 0, end: int | None = None, pre_relu: bool = False
    ) -> Tensor:
        """Run stages ``start .. end-1`` (0-based, ``end=None``: to the last); with
        ``pre_relu`` the last block's output before its final ReLU."""
        ...

    def forward_head(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` from the last stage's (post-ReLU) feature map."""
        ...

    def last_bn(self) -> nn.Module:
        """The BatchNorm that produces the final pre-ReLU feature (margins come from it)."""
        ...


# what distillation calls on both networks of a pair
_PAIR_MEMBERS = ("forward_stem", "forward_stages", "forward_head", "num_stages", "stage_channels")


def check_staged(model: nn.Module, role: str = "model") -> None:
    """Check that ``model`` has what distillation calls: ``forward_stem``, ``forward_stages``,
    ``forward_head``, ``num_stages`` and ``stage_channels``.

    Raises:
        StageMismatchError: naming the first member ``model`` (the ``role``) lacks.
    """
    for attr in _PAIR_MEMBERS:
        if not hasattr(model, attr):
            raise StageMismatchError(
                f"the {role} ({type(model).__name__}) does not follow the staged contract: "
                f"no {attr!r}"
            )


def last_bn_of(model: nn.Module) -> nn.BatchNorm2d:
    """``model.last_bn()``, checked to be a ``BatchNorm2d`` (its statistics give the margins).

    Raises:
        StageMismatchError: ``model`` has no ``last_bn()`` returning a ``BatchNorm2d``.
    """
    bn = model.last_bn() if hasattr(model, "last_bn") else None
    if not isinstance(bn, nn.BatchNorm2d):
        raise StageMismatchError(
            f"{type(model).__name__} exposes no last BatchNorm (needed for margins)"
        )
    return bn


def check_staged_pair(
    teacher: nn.Module, student: nn.Module, input_shape: Sequence[int] | None = None
) -> None:
    """Check that the student's stage outputs fit the teacher's stages.

    Compares stage counts and channels and, when ``input_shape`` ``(C, H, W)`` is given, the full
    stage-output shapes and class counts on a dummy batch (no statistics are updated).

    Raises:
        StageMismatchError: naming the first stage that does not match.
    """
    check_staged(teacher, "teacher")
    check_staged(student, "student")
    if teacher.num_stages != student.num_stages:
        raise StageMismatchError(
            f"teacher has {teacher.num_stages} stages, student has {student.num_stages}"
        )
    for i, (tc, sc) in enumerate(zip(teacher.stage_channels, student.stage_channels)):
        if tc != sc:
            raise StageMismatchError(
                f"stage {i + 1} outputs {sc} channels in the student but {tc} in the teacher"
            )
    if input_shape is not None:
        _check_stage_shapes(teacher, student, input_shape)


def _check_stage_shapes(teacher: nn.Module, student: nn.Module, input_shape: Sequence[int]) -> None:
    """Stage-output shapes and class counts on a zero batch, both networks in eval mode."""
    modes = (teacher.training, student.training)
    teacher.eval()
    student.eval()
    try:
        p = next(student.parameters())
        x = torch.zeros(2, *input_shape, device=p.device, dtype=p.dtype)
        with torch.no_grad():
            hs, ht = student.forward_stem(x), teacher.forward_stem(x)
            for i in range(student.num_stages):
                hs = student.forward_stages(hs, i, i + 1)
                ht = teacher.forward_stages(ht, i, i + 1)
                if hs.shape != ht.shape:
                    raise StageMismatchError(
                        f"stage {i + 1} output shape differs: student {tuple(hs.shape[1:])}, "
                        f"teacher {tuple(ht.shape[1:])}"
                    )
            ns, nt = student.forward_head(hs).shape[1], teacher.forward_head(ht).shape[1]
            if ns != nt:
                raise StageMismatchError(f"student has {ns} classes, teacher has {nt}")
    finally:
        teacher.train(modes[0])
        student.train(modes[1])
