"""Training objectives sharing one interface: ``objective(images, labels) -> dict``.

Every objective is an ``nn.Module`` holding the network being trained as ``.student`` (for
``CrossEntropy`` simply the model) and returning a dict with ``loss`` (the scalar to minimise),
``logits`` (the student's logits) and named, detached loss terms for logging. Losses are
computed in float32 also under autocast: the networks run in fp16/bf16, the losses do not. The engine calls
``set_progress(epoch, total_epochs)`` before each step so schedules such as the decay factor can
follow the run; a training loop is ``objective(x, y)["loss"].backward()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import check_range
from ..models.contract import check_staged, last_bn_of
from ..models.fold import to_deploy
from .errors import DistillError
from .losses import Connector, bn_margins, hinton_kd_loss, margin_feature_loss


def check_kd_settings(alpha: float, temperature: float, prefix: str = "") -> None:
    """Hinton KD's weight ``alpha`` in [0, 1] and ``temperature`` > 0, else :class:`DistillError`
    naming ``prefix + "alpha"`` / ``prefix + "temperature"``."""
    check_range(f"{prefix}alpha", alpha, 0.0, 1.0, error=DistillError)
    check_range(f"{prefix}temperature", temperature, 0.0, low_open=True, error=DistillError)


def freeze(model: nn.Module) -> nn.Module:
    """Put ``model`` in eval mode and stop gradients to its parameters."""
    model.eval()
    model.requires_grad_(False)
    return model


def _check_module(role: str, model: object) -> None:
    if not isinstance(model, nn.Module):
        raise DistillError(f"the {role} must be a torch.nn.Module, got {type(model).__name__}")


class Objective(nn.Module):
    """Base class: holds ``student`` and the run progress."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        _check_module("student", student)
        self.student = student
        self.epoch = 0.0
        self.total_epochs = 1

    def set_progress(self, epoch: float, total_epochs: int) -> None:
        """Tell the objective where the run is (``epoch`` may be fractional)."""
        self.epoch = float(epoch)
        self.total_epochs = int(total_epochs)

    @property
    def rebuilt_state(self) -> tuple[str, ...]:
        """``state_dict`` key prefixes a checkpoint need not hold: state this objective rebuilds
        from its own source (none here)."""
        return ()


class TeacherObjective(Objective):
    """Base class of objectives with a teacher. A frozen teacher computes through
    ``teacher_folded``, a copy with its BatchNorms folded into the convolutions: the same function
    in eval mode, with fewer passes over memory forward and backward (``teacher`` stays the
    original)."""

    def __init__(self, teacher: nn.Module, student: nn.Module, train_teacher: bool = False) -> None:
        super().__init__(student)
        _check_module("teacher", teacher)
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

    @property
    def rebuilt_state(self) -> tuple[str, ...]:
        """A frozen teacher and its folded copy are rebuilt from the teacher's source on resume;
        a co-trained teacher is state to keep."""
        return () if self.train_teacher else ("teacher.", "teacher_folded.")

    def train(self, mode: bool = True) -> TeacherObjective:
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


class HintonKD(TeacherObjective):
    """``alpha * T^2 KL + (1 - alpha) * CE`` from the frozen teacher's logits."""

    def __init__(
        self, teacher: nn.Module, student: nn.Module, alpha: float = 0.9, temperature: float = 4.0
    ) -> None:
        check_kd_settings(alpha, temperature)
        super().__init__(teacher, student)
        self.alpha, self.temperature = alpha, temperature

    def forward(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            t_logits = self.teacher_compute(images)
        logits = self.student(images)
        loss = hinton_kd_loss(logits, t_logits, labels, self.alpha, self.temperature)
        return {"loss": loss, "logits": logits, "kd": loss.detach()}


class FeatureKD(TeacherObjective):
    """``CE + lambda * D(C(f_student), f_teacher)`` on the final pre-ReLU feature."""

    def __init__(self, teacher: nn.Module, student: nn.Module, feature_weight: float = 1e-3) -> None:
        check_staged(teacher, "teacher")
        check_staged(student, "student")
        check_range("feature_weight", feature_weight, 0.0, error=DistillError)
        super().__init__(teacher, student)
        self.feature_weight = feature_weight
        s_ch = student.stage_channels[-1]
        t_ch = teacher.stage_channels[-1]
        self.connector = Connector(s_ch, t_ch)
        self.register_buffer("margin", bn_margins(last_bn_of(teacher)))

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
