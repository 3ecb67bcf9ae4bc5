"""Loss functions: margin feature distillation (Heo et al., ICCV 2019) and Hinton KD."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import DistillError


def bn_margins(bn: nn.BatchNorm2d, min_prob: float = 1e-3, eps: float = 1e-6) -> Tensor:
    """Per-channel margins from the teacher's last BatchNorm (docs/method.md section 3).

    Channel ``c`` of the pre-ReLU feature is modelled as ``X ~ N(beta_c, gamma_c^2)``; the margin
    is ``E[X | X < 0] = beta - |gamma| * pdf(beta/|gamma|) / cdf(-beta/|gamma|)``, or
    ``-3 |gamma|`` where ``P(X < 0) < min_prob``. Returns a detached tensor of shape ``(C,)``.
    """
    if bn.weight is None or bn.bias is None:
        raise DistillError(
            "margin distillation needs the teacher's last BatchNorm to be affine (its gamma and "
            "beta give the margins); build the teacher with affine BatchNorms (the default)")
    with torch.no_grad():
        s = bn.weight.detach().abs().double().clamp_min(eps)
        m = bn.bias.detach().double()
        prob_neg = torch.special.ndtr(-m / s)
        pdf = torch.exp(-0.5 * (m / s) ** 2) / math.sqrt(2 * math.pi)
        conditional = m - s * pdf / prob_neg.clamp_min(1e-300)
        margin = torch.where(prob_neg > min_prob, conditional, -3.0 * s)
    return margin.to(bn.weight.dtype)


def margin_feature_loss(student: Tensor, teacher: Tensor, margin: Tensor) -> Tensor:
    """Margin feature-distillation loss ``D(s, t)``.

    ``t' = max(t, margin)`` per channel; the squared error ``(s - t')^2`` counts only where
    ``s > t'`` or ``t > 0``; summed over elements and divided by the batch size. Computed in
    float32 whatever the inputs' dtype (under fp16 autocast the sum, about 2.5e4 per image at
    the start of training, would overflow).

    Args:
        student: ``(N, C, H, W)`` student feature (after its connector), pre-ReLU.
        teacher: ``(N, C, H, W)`` teacher pre-ReLU feature (no gradient is taken through it).
        margin: ``(C,)`` per-channel margins from :func:`bn_margins`.
    """
    if student.shape != teacher.shape:
        raise DistillError(
            f"student feature {tuple(student.shape)} and teacher feature "
            f"{tuple(teacher.shape)} differ in shape; the connector must map the student's "
            "stage to the teacher's channels and both networks must downsample alike"
        )
    student, teacher = student.float(), teacher.detach().float()
    target = torch.maximum(teacher, margin.float().view(1, -1, 1, 1))
    mask = (student > target) | (teacher > 0)
    sq = (student - target).pow(2) * mask
    return sq.sum() / student.shape[0]


def kd_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 4.0) -> Tensor:
    """Hinton's soft-target loss ``T^2 * KL(softmax(t/T) || softmax(s/T))``, batch mean (float32)."""
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=1),
        F.log_softmax(teacher_logits.detach().float() / t, dim=1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)


def hinton_kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor,
    alpha: float = 0.9,
    temperature: float = 4.0,
) -> Tensor:
    """``alpha * kd_loss + (1 - alpha) * CE`` (Hinton et al., 2015), in float32."""
    return alpha * kd_loss(student_logits, teacher_logits, temperature) + (1 - alpha) * (
        F.cross_entropy(student_logits.float(), labels)
    )


class Connector(nn.Sequential):
    """1x1 conv + BN mapping a student feature onto the teacher's channels (training only)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        bn = nn.BatchNorm2d(out_channels)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        super().__init__(conv, bn)
