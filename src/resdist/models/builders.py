"""Registered builders: ``resnetN`` / ``plainN`` for N in 18, 34, 50 (ImageNet width) and
20, 32, 44, 56, 110 (thin CIFAR ResNets of He et al., depth 6n+2)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .registry import register_model
from .resnet import BasicBlock, Bottleneck, ResNet

_IMAGENET_SPECS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                   50: (Bottleneck, [3, 4, 6, 3])}
THIN_DEPTHS = (20, 32, 44, 56, 110)


def _imagenet_resnet(
    depth: int, *, weights: str | None = None, progress: bool = True, **kwargs: Any
) -> ResNet:
    block, layers = _IMAGENET_SPECS[depth]
    kwargs.setdefault("num_classes", 1000)
    model = ResNet(block, layers, (64, 128, 256, 512), **kwargs)
    if weights is not None:
        from .pretrained import load_torchvision_weights

        load_torchvision_weights(model, f"resnet{depth}", weights, progress=progress)
    return model


def _thin_resnet(depth: int, *, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    if (depth - 2) % 6 != 0:
        raise ValueError(f"thin CIFAR ResNets have depth 6n+2, got {depth}")
    n = (depth - 2) // 6
    widths = [max(1, round(w * width_mult)) for w in (16, 32, 64)]
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("stem", "cifar")
    return ResNet(BasicBlock, [n] * 3, widths, **kwargs)


def _register_pair(depth: int, builder) -> None:
    def resnet(**kwargs: Any) -> nn.Module:
        return builder(depth, **kwargs)

    def plain(**kwargs: Any) -> nn.Module:
        kwargs.setdefault("shortcuts", False)
        return builder(depth, **kwargs)

    kind = "ImageNet-width" if builder is _imagenet_resnet else "thin CIFAR"
    resnet.__name__ = resnet.__qualname__ = f"resnet{depth}"
    plain.__name__ = plain.__qualname__ = f"plain{depth}"
    resnet.__doc__ = f"{kind} ResNet-{depth}. Keyword arguments go to :class:`ResNet`."
    plain.__doc__ = (
        f"Plain (shortcut-free) {kind} network with ResNet-{depth}'s layout. "
        "Keyword arguments go to :class:`ResNet`."
    )
    register_model(resnet)
    register_model(plain)
    globals()[resnet.__name__] = resnet
    globals()[plain.__name__] = plain


for _d in _IMAGENET_SPECS:
    _register_pair(_d, _imagenet_resnet)
for _d in THIN_DEPTHS:
    _register_pair(_d, _thin_resnet)
