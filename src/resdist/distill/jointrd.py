"""JointRD: the plain student trained through a (frozen) ResNet teacher (docs/method.md section 3).

For each stage boundary ``k < S`` the student's stage-``k`` output runs through the teacher's
stages ``k+1..S`` and head, giving logits ``z_k``; the student's own forward gives ``z_S``. The
loss, with ``w = 1/S`` and decay factor ``m = m(e)``, is::

    L = w * [m * sum_k CE(z_k, y) + CE(z_S, y)]
      + w * lambda * [m * sum_k D(C_k f_k, f_T) + D(C_S f_S, f_T)]

where ``f`` are final pre-ReLU features, ``C`` per-path connectors and ``D`` the margin loss.
Gradients flow *through* the frozen teacher's later stages into the student's early stages.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import check_distill_settings
from ..models.contract import check_staged_pair, last_bn_of
from .losses import Connector, bn_margins, hinton_kd_loss, margin_feature_loss
from .objectives import TeacherObjective, check_kd_settings
from .schedule import decay_factor


class ResidualDistiller(TeacherObjective):
    """Joint training of a plain ``student`` with a ResNet ``teacher``.

    Args:
        teacher: the ResNet (staged contract); frozen unless ``train_teacher``.
        student: the plain network, same stage layout and shapes.
        dc: floor of the decay factor ``m(e)`` (0.5 CIFAR, 5e-3 ImageNet).
        decay_fraction: ``m(e)`` decays over this fraction of the run (60/200 released).
        feature_weight: ``lambda`` (1e-3 for 32x32, 1e-4 for 224x224); 0 turns the margin
            feature term off and skips the teacher's own forward.
        path_loss: ``"ce"`` (paper) or ``"kd"`` (Hinton KD on the mixed paths).
        kd_alpha, kd_temperature: Hinton KD settings for ``path_loss="kd"``.
        train_teacher: co-train the teacher (the released code's JOINT mode); its own CE is
            added to the loss.
        input_shape: ``(C, H, W)``; when given, stage shapes are checked on a dummy batch.

    ``forward(images, labels)`` returns ``loss``, ``logits`` (the student's) and the terms
    ``ce_student``, ``ce_paths``, ``feat_student``, ``feat_paths``, ``decay``.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        *,
        dc: float = 0.5,
        decay_fraction: float = 0.3,
        feature_weight: float = 1e-3,
        path_loss: str = "ce",
        kd_alpha: float = 0.9,
        kd_temperature: float = 4.0,
        train_teacher: bool = False,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        check_staged_pair(teacher, student, input_shape)
        check_distill_settings(dc, decay_fraction, feature_weight, path_loss)
        check_kd_settings(kd_alpha, kd_temperature, prefix="kd_")
        super().__init__(teacher, student, train_teacher)
        self.num_stages = student.num_stages
        self.dc, self.decay_fraction = dc, decay_fraction
        self.feature_weight = feature_weight
        self.path_loss = path_loss
        self.kd_alpha, self.kd_temperature = kd_alpha, kd_temperature
        if feature_weight > 0:
            t_ch = teacher.stage_channels[-1]
            s_ch = student.stage_channels[-1]
            # one connector per mixed path (their features come out of the teacher) + the student
            self.connectors = nn.ModuleList(
                [Connector(t_ch, t_ch) for _ in range(self.num_stages - 1)] + [Connector(s_ch, t_ch)]
            )
            if not train_teacher:
                self.register_buffer("margin", bn_margins(last_bn_of(teacher)))

    @property
    def decay(self) -> float:
        """The current decay factor ``m(e)``."""
        return decay_factor(self.epoch, self.decay_fraction * self.total_epochs, self.dc)

    def _mixed_paths(self, boundary: list[Tensor]) -> list[Tensor]:
        """Run each boundary feature through the teacher's later stages; returns the pre-ReLU
        final features of paths ``k = 1 .. S-1``. With a frozen (eval-mode) teacher, paths that
        share a teacher stage run as one concatenated batch: exact, since BN uses running stats."""
        te, S = self.teacher_compute, self.num_stages
        if self.train_teacher:
            return [
                te.forward_stages(h, k + 1, S, pre_relu=True) for k, h in enumerate(boundary)
            ]
        carry: Tensor | None = None
        for j in range(1, S):
            carry = boundary[j - 1] if carry is None else torch.cat([carry, boundary[j - 1]])
            carry = te.forward_stages(carry, j, j + 1, pre_relu=j == S - 1)
        return list(carry.chunk(S - 1)) if carry is not None else []

    def paths(self, images: Tensor) -> dict[str, Tensor | list[Tensor]]:
        """All forward paths, with graph: ``logits`` and ``feature`` (pre-ReLU) of the student,
        ``path_logits`` and ``path_features`` of the mixed paths ``k = 1 .. S-1``."""
        st, te, S = self.student, self.teacher_compute, self.num_stages
        h = st.forward_stem(images)
        boundary = []
        for k in range(S - 1):
            h = st.forward_stages(h, k, k + 1)
            boundary.append(h)
        s_pre = st.forward_stages(h, S - 1, S, pre_relu=True)
        logits = st.forward_head(F.relu(s_pre))
        path_pre = self._mixed_paths(boundary)
        path_logits = list(te.forward_head(F.relu(torch.cat(path_pre))).chunk(S - 1)) if path_pre else []
        return {"logits": logits, "feature": s_pre, "path_logits": path_logits,
                "path_features": path_pre}

    def forward(self, images: Tensor, labels: Tensor) -> dict[str, Tensor]:
        te, S = self.teacher_compute, self.num_stages
        p = self.paths(images)
        logits, s_pre = p["logits"], p["feature"]
        path_logits, path_pre = p["path_logits"], p["path_features"]

        need_teacher = self.feature_weight > 0 or self.path_loss == "kd" or self.train_teacher
        t_pre = t_logits = None
        if need_teacher:
            with torch.set_grad_enabled(self.train_teacher and torch.is_grad_enabled()):
                t_pre = te.forward_stages(te.forward_stem(images), pre_relu=True)
                t_logits = te.forward_head(F.relu(t_pre))

        m, w = self.decay, 1.0 / S
        # every loss and sum in float32, also under autocast (the networks alone run in fp16/bf16)
        ce_student = F.cross_entropy(logits.float(), labels)
        if self.path_loss == "ce":
            path_terms = [F.cross_entropy(z.float(), labels) for z in path_logits]
        else:
            path_terms = [
                hinton_kd_loss(z, t_logits, labels, self.kd_alpha, self.kd_temperature)
                for z in path_logits
            ]
        ce_paths = torch.stack(path_terms).sum() if path_terms else ce_student.new_zeros(())
        loss = w * (m * ce_paths + ce_student)
        out = {"ce_student": ce_student.detach(), "ce_paths": ce_paths.detach()}

        if self.feature_weight > 0:
            margin = self.margin if not self.train_teacher else bn_margins(last_bn_of(te))
            target = t_pre.detach()
            feat_paths = sum(
                margin_feature_loss(c(f), target, margin)
                for c, f in zip(self.connectors[:-1], path_pre)
            )
            feat_student = margin_feature_loss(self.connectors[-1](s_pre), target, margin)
            loss = loss + w * self.feature_weight * (m * feat_paths + feat_student)
            out["feat_student"] = feat_student.detach()
            out["feat_paths"] = torch.as_tensor(feat_paths).detach()
        if self.train_teacher:
            ce_teacher = F.cross_entropy(t_logits.float(), labels)
            loss = loss + ce_teacher
            out["ce_teacher"] = ce_teacher.detach()
        # a tensor built from the loss (not torch.tensor(m)) keeps torch.compile from guarding on m
        out.update(loss=loss, logits=logits, decay=torch.ones_like(ce_student.detach()) * m)
        return out
