"""Teacher ResNets and plain students with one builder (see :mod:`resdist.models.resnet`), the
staged contract they follow (:mod:`~resdist.models.contract`) and the transforms that fold them
for training and deployment (:mod:`~resdist.models.fold`)."""

from . import builders
from .adapters import from_torchvision
from .builders import (
    THIN_DEPTHS,
    plain8,
    plain14,
    plain18,
    plain20,
    plain32,
    plain34,
    plain44,
    plain50,
    plain56,
    plain110,
    resnet8,
    resnet14,
    resnet18,
    resnet20,
    resnet32,
    resnet34,
    resnet44,
    resnet50,
    resnet56,
    resnet110,
)
from .contract import StagedModel, StageMismatchError, check_staged, check_staged_pair, last_bn_of
from .dirac import DiracConv2d, fold_dirac
from .fold import calibrate_bn, fold_batchnorms, fuse_conv_bn, to_deploy
from .registry import (
    UnknownModelError,
    create_model,
    is_model,
    list_models,
    model_description,
    parameter_count,
    register_model,
    student_name_for,
    teacher_name_for,
)
from .repvgg import RepVGGConv2d, fold_repvgg
from .resnet import BasicBlock, Bottleneck, ResNet

__all__ = [
    "THIN_DEPTHS", "BasicBlock", "Bottleneck", "DiracConv2d", "RepVGGConv2d", "ResNet",
    "StageMismatchError",
    "StagedModel", "UnknownModelError", "builders", "calibrate_bn", "check_staged",
    "check_staged_pair", "create_model", "fold_batchnorms", "fold_dirac", "fold_repvgg",
    "from_torchvision",
    "fuse_conv_bn", "is_model", "last_bn_of", "list_models", "model_description",
    "parameter_count", "plain8", "plain14", "plain18", "plain20", "plain32", "plain34", "plain44",
    "plain50", "plain56", "plain110", "register_model", "resnet8", "resnet14", "resnet18",
    "resnet20", "resnet32", "resnet34", "resnet44", "resnet50", "resnet56", "resnet110",
    "student_name_for", "teacher_name_for", "to_deploy",
]
