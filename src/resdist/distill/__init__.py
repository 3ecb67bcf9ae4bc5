"""Residual distillation (JointRD), its losses and schedule, and the baselines."""

from .jointrd import ResidualDistiller
from .losses import Connector, bn_margins, hinton_kd_loss, kd_loss, margin_feature_loss
from .objectives import (
    CrossEntropy,
    FeatureKD,
    HintonKD,
    Objective,
    StageMismatchError,
    check_staged_pair,
    freeze,
)
from .schedule import decay_factor

__all__ = [
    "Connector", "CrossEntropy", "FeatureKD", "HintonKD", "Objective", "ResidualDistiller",
    "StageMismatchError", "bn_margins", "check_staged_pair", "decay_factor", "freeze",
    "hinton_kd_loss", "kd_loss", "margin_feature_loss",
]
