"""Training objectives sharing one interface: ``objective(images, labels) -> dict``.

Every objective is an ``nn.Module`` holding the network being trained as ``.student`` (for
``CrossEntropy`` simply the model) and returning a dict with ``loss`` (the scalar to minimise),
``logits`` (the student's logits) and named, detached loss terms for logging. Losses are
computed in float32 also under autocast: the networks run in fp16/bf16, the losses do not. The engine calls
``set_progress(epoch, total_epochs)`` before each step so schedules such as the decay factor can
follow the run; a training loop is ``objective(x, y)["loss"].backward()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..deploy.fuse import to_deploy
from ..errors import ResdistError
from .losses import Connector, bn_margins, hinton_kd_loss, margin_feature_loss


class StageMismatchError(ResdistError, ValueError):
    """Teacher and student do not line up stage by stage."""


def _last_bn(model: nn.Module) -> nn.BatchNorm2d:
    bn = model.last_bn() if hasattr(model, "last_bn") else None
    if not isinstance(bn, nn.BatchNorm2d):
        raise ValueError(f"{type(model).__name__} exposes no last BatchNorm (needed for margins)")
    return bn


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and stop gradients to its parameters."""
    model.eval()
    model.requires_grad_(False)
    return model


def check_staged_pair(
    teacher: nn.Module, student: nn.Module, input_shape: Sequence[int] | None = None
) -> None:
    """Check that the student's stage outputs fit the teacher's stages.

    Compares stage counts and channels and, when ``input_shape`` ``(C, H, W)`` is given, the full
    stage-output shapes and class counts on a dummy batch (no statistics are updated).

    Raises:
        StageMismatchError: naming the first stage that does not match.
    """
    for name, m in (("teacher", teacher), ("student", student)):
        for attr in ("forward_stem", "forward_stages", "forward_head", "num_stages"):
            if not hasattr(m, attr):
                raise StageMismatchError(
                    f"the {name} ({type(m).__name__}) does not follow the staged contract: "
                    f"no {attr!r}"
                )
    if teacher.num_stages != student.num_stages:
        raise StageMismatchError(
            f"teacher has {teacher.num_stages} stages, student has {student.num_stages}"
        )
    for i, (tc, sc) in enumerate(
        zip(getattr(teacher, "stage_channels", []), getattr(student, "stage_channels", []))
    ):
        if tc != sc:
            raise StageMismatchError(
                f"stage {i + 1} outputs {sc} channels in the student but {tc} in the teacher"
            )
    if input_shape is None:
        return
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


class Objective(nn.Module):
    """Base class: holds ``student`` and the run progress."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student
        self.epoch = 0.0
        self.total_epochs = 1

    def set_progress(self, epoch: float, total_epochs: int) -> None:
        """Tell the objective where the run is (``epoch`` may be fractional)."""
        self.epoch = float(epoch)
        self.total_epochs = int(total_epochs)


class _WithTeacher(Objective):
    """Holds the teacher. A frozen teacher computes through ``teacher_folded``, a copy with its
    BatchNorms folded into the convolutions: the same function in eval mode, with fewer passes
    over memory forward and backward (the checkpointed ``teacher`` stays the original)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, train_teacher: bool = False) -> None:
        super().__init__(student)
        self.teacher = teacher
        self.train_teacher = train_teacher
        self.teacher_folded: nn.Module | None = None
        if not train_teacher:
            freeze(teacher)
            self.teacher_folded = freeze(to_deploy(teacher))

    @property
    def teacher_compute(self) -> nn.Module:
        """The module that runs the teacher's forward passes."""
        return self.teacher if self.teacher_folded is None else self.teacher_folded

    def train(self, mode: bool = True) -> _WithTeacher:
        super().train(mode)
        if not self.train_teacher:
            self.teacher.eval()
            self.teacher_folded.eval()
        return self


class CrossEntropy(Objective):
    """Plain cross-entropy on the student's logits."""

    def forward(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        logits = self.student(images)
        loss = F.cross_entropy(logits.float(), labels)
        return {"loss": loss, "logits": logits, "ce": loss.detach()}


class HintonKD(_WithTeacher):
    """``alpha * T^2 KL + (1 - alpha) * CE`` from the frozen teacher's logits."""

    def __init__(
        self, teacher: nn.Module, student: nn.Module, alpha: float = 0.9, temperature: float = 4.0
    ) -> None:
        super().__init__(teacher, student)
        self.alpha, self.temperature = alpha, temperature

    def forward(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            t_logits = self.teacher_compute(images)
        logits = self.student(images)
        loss = hinton_kd_loss(logits, t_logits, labels, self.alpha, self.temperature)
        return {"loss": loss, "logits": logits, "kd": loss.detach()}


class FeatureKD(_WithTeacher):
    """``CE + lambda * D(C(f_student), f_teacher)`` on the final pre-ReLU feature."""

    def __init__(self, teacher: nn.Module, student: nn.Module, feature_weight: float = 1e-3) -> None:
        super().__init__(teacher, student)
        self.feature_weight = feature_weight
        s_ch = student.stage_channels[-1]
        t_ch = teacher.stage_channels[-1]
        self.connector = Connector(s_ch, t_ch)
        self.register_buffer("margin", bn_margins(_last_bn(teacher)))

    def forward(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        st = self.student
        s_pre = st.forward_stages(st.forward_stem(images), pre_relu=True)
        logits = st.forward_head(F.relu(s_pre))
        ce = F.cross_entropy(logits.float(), labels)
        with torch.no_grad():
            te = self.teacher_compute
            t_pre = te.forward_stages(te.forward_stem(images), pre_relu=True)
        feat = margin_feature_loss(self.connector(s_pre), t_pre, self.margin)
        loss = ce + self.feature_weight * feat
        return {"loss": loss, "logits": logits, "ce": ce.detach(), "feat": feat.detach()}
