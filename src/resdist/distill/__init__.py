"""Residual distillation (JointRD), its losses and schedule, and the baselines."""

from ..models.contract import StageMismatchError, check_staged_pair
from .errors import DistillError
from .jointrd import ResidualDistiller
from .losses import Connector, bn_margins, hinton_kd_loss, kd_loss, margin_feature_loss
from .objectives import (
    CrossEntropy,
    FeatureKD,
    HintonKD,
    Objective,
    TeacherObjective,
    freeze,
)
from .schedule import decay_factor

__all__ = [
    "Connector", "CrossEntropy", "DistillError", "FeatureKD", "HintonKD", "Objective", "ResidualDistiller",
    "StageMismatchError", "TeacherObjective", "bn_margins", "check_staged_pair", "decay_factor", "freeze",
    "hinton_kd_loss", "kd_loss", "margin_feature_loss",
]
