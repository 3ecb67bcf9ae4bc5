"""Teacher ResNets and plain students with one builder (see :mod:`resdist.models.resnet`)."""

from . import builders
from .adapters import from_torchvision
from .builders import THIN_DEPTHS
from .dirac import DiracConv2d, fold_dirac
from .registry import (
    UnknownModelError,
    create_model,
    is_model,
    list_models,
    model_description,
    register_model,
    teacher_name_for,
)
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "THIN_DEPTHS", "BasicBlock", "Bottleneck", "DiracConv2d", "ResNet", "UnknownModelError",
    "builders", "create_model", "fold_dirac", "from_torchvision", "is_model", "list_models", "model_description",
    "register_model",
    "teacher_name_for",
]
