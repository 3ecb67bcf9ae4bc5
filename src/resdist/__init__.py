"""resdist: Residual Distillation (JointRD) for plain CNNs without shortcuts."""

__version__ = "0.1.0"
