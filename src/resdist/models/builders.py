"""Registered builders: ``resnetN`` / ``plainN`` for N in 18, 34, 50 (ImageNet width),
``resnetNd`` / ``plainNd`` for the same depths in the ResNet-D layout (deep stem, average-pool
downsampling: timm's ``resnet18d/34d/50d``), and 8, 14, 20, 32, 44, 56, 110 (thin CIFAR ResNets of
He et al., depth 6n+2; ``resnet8`` is MLPerf Tiny's image-classification model)."""

from __future__ import annotations

from typing import Any

from .registry import register_model
from .resnet import BasicBlock, Bottleneck, ResNet

_IMAGENET_SPECS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
                   50: (Bottleneck, [3, 4, 6, 3])}
THIN_DEPTHS = (8, 14, 20, 32, 44, 56, 110)


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


def _resnet_d(depth: int, **kwargs: Any) -> ResNet:
    """ResNet-D (He et al., "Bag of Tricks", 2019) with timm's parameter names, so a
    ``timm.create_model("resnet{depth}d")`` state dict loads with ``strict=True``."""
    block, layers = _IMAGENET_SPECS[depth]
    kwargs.setdefault("num_classes", 1000)
    kwargs.setdefault("stem", "deep")
    kwargs.setdefault("avg_down", True)
    return ResNet(block, layers, (64, 128, 256, 512), **kwargs)


def _thin_resnet(depth: int, *, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    n = (depth - 2) // 6
    widths = [max(1, round(w * width_mult)) for w in (16, 32, 64)]
    kwargs.setdefault("num_classes", 10)
    kwargs.setdefault("stem", "cifar")
    return ResNet(BasicBlock, [n] * 3, widths, **kwargs)


def _plain(kwargs: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments of the plain counterpart: no shortcuts unless asked otherwise."""
    return {"shortcuts": False, **kwargs}


@register_model
def resnet18(*, weights: str | None = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ImageNet-width ResNet-18; ``weights`` names torchvision weights (e.g. ``"IMAGENET1K_V1"``).
    Other keyword arguments go to :class:`ResNet`."""
    return _imagenet_resnet(18, weights=weights, progress=progress, **kwargs)


@register_model
def plain18(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) ImageNet-width network with ResNet-18's layout.
    Keyword arguments go to :class:`ResNet` (and ``weights``/``progress`` as for ``resnet18``)."""
    return _imagenet_resnet(18, **_plain(kwargs))


@register_model
def resnet34(*, weights: str | None = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ImageNet-width ResNet-34; ``weights`` names torchvision weights (e.g. ``"IMAGENET1K_V1"``).
    Other keyword arguments go to :class:`ResNet`."""
    return _imagenet_resnet(34, weights=weights, progress=progress, **kwargs)


@register_model
def plain34(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) ImageNet-width network with ResNet-34's layout.
    Keyword arguments go to :class:`ResNet` (and ``weights``/``progress`` as for ``resnet34``)."""
    return _imagenet_resnet(34, **_plain(kwargs))


@register_model
def resnet50(*, weights: str | None = None, progress: bool = True, **kwargs: Any) -> ResNet:
    """ImageNet-width ResNet-50; ``weights`` names torchvision weights (e.g. ``"IMAGENET1K_V1"``).
    Other keyword arguments go to :class:`ResNet`."""
    return _imagenet_resnet(50, weights=weights, progress=progress, **kwargs)


@register_model
def plain50(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) ImageNet-width network with ResNet-50's layout.
    Keyword arguments go to :class:`ResNet` (and ``weights``/``progress`` as for ``resnet50``)."""
    return _imagenet_resnet(50, **_plain(kwargs))


@register_model
def resnet18d(**kwargs: Any) -> ResNet:
    """ResNet-18-D: ResNet-18 with a deep 3x3 stem and average-pool downsampling (timm's
    ``resnet18d`` layout and names). Keyword arguments go to :class:`ResNet`."""
    return _resnet_d(18, **kwargs)


@register_model
def plain18d(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) network with ResNet-18-D's layout (the student of a ``resnet18d``
    teacher). Keyword arguments go to :class:`ResNet`."""
    return _resnet_d(18, **_plain(kwargs))


@register_model
def resnet34d(**kwargs: Any) -> ResNet:
    """ResNet-34-D: ResNet-34 with a deep 3x3 stem and average-pool downsampling (timm's
    ``resnet34d`` layout and names). Keyword arguments go to :class:`ResNet`."""
    return _resnet_d(34, **kwargs)


@register_model
def plain34d(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) network with ResNet-34-D's layout (the student of a ``resnet34d``
    teacher). Keyword arguments go to :class:`ResNet`."""
    return _resnet_d(34, **_plain(kwargs))


@register_model
def resnet50d(**kwargs: Any) -> ResNet:
    """ResNet-50-D: ResNet-50 with a deep 3x3 stem and average-pool downsampling (timm's
    ``resnet50d`` layout and names). Keyword arguments go to :class:`ResNet`."""
    return _resnet_d(50, **kwargs)


@register_model
def plain50d(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) network with ResNet-50-D's layout (the student of a ``resnet50d``
    teacher). Keyword arguments go to :class:`ResNet`."""
    return _resnet_d(50, **_plain(kwargs))


@register_model
def resnet8(*, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    """Thin CIFAR ResNet-8, the layout of MLPerf Tiny's image-classification model. A 3x3 stem,
    one basic block per stage (16-32-64 channels times ``width_mult``), 1x1 projection shortcuts
    at stride 2; other keyword arguments go to :class:`ResNet`."""
    return _thin_resnet(8, width_mult=width_mult, **kwargs)


@register_model
def plain8(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) thin CIFAR network with ResNet-8's layout.
    Keyword arguments go to :class:`ResNet` (and ``width_mult`` as for ``resnet8``)."""
    return _thin_resnet(8, **_plain(kwargs))


@register_model
def resnet14(*, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    """Thin CIFAR ResNet-14 (two basic blocks per stage, widths 16-32-64 times ``width_mult``).
    Other keyword arguments go to :class:`ResNet`."""
    return _thin_resnet(14, width_mult=width_mult, **kwargs)


@register_model
def plain14(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) thin CIFAR network with ResNet-14's layout.
    Keyword arguments go to :class:`ResNet` (and ``width_mult`` as for ``resnet14``)."""
    return _thin_resnet(14, **_plain(kwargs))


@register_model
def resnet20(*, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    """Thin CIFAR ResNet-20 (widths 16-32-64 times ``width_mult``).
    Other keyword arguments go to :class:`ResNet`."""
    return _thin_resnet(20, width_mult=width_mult, **kwargs)


@register_model
def plain20(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) thin CIFAR network with ResNet-20's layout.
    Keyword arguments go to :class:`ResNet` (and ``width_mult`` as for ``resnet20``)."""
    return _thin_resnet(20, **_plain(kwargs))


@register_model
def resnet32(*, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    """Thin CIFAR ResNet-32 (widths 16-32-64 times ``width_mult``).
    Other keyword arguments go to :class:`ResNet`."""
    return _thin_resnet(32, width_mult=width_mult, **kwargs)


@register_model
def plain32(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) thin CIFAR network with ResNet-32's layout.
    Keyword arguments go to :class:`ResNet` (and ``width_mult`` as for ``resnet32``)."""
    return _thin_resnet(32, **_plain(kwargs))


@register_model
def resnet44(*, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    """Thin CIFAR ResNet-44 (widths 16-32-64 times ``width_mult``).
    Other keyword arguments go to :class:`ResNet`."""
    return _thin_resnet(44, width_mult=width_mult, **kwargs)


@register_model
def plain44(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) thin CIFAR network with ResNet-44's layout.
    Keyword arguments go to :class:`ResNet` (and ``width_mult`` as for ``resnet44``)."""
    return _thin_resnet(44, **_plain(kwargs))


@register_model
def resnet56(*, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    """Thin CIFAR ResNet-56 (widths 16-32-64 times ``width_mult``).
    Other keyword arguments go to :class:`ResNet`."""
    return _thin_resnet(56, width_mult=width_mult, **kwargs)


@register_model
def plain56(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) thin CIFAR network with ResNet-56's layout.
    Keyword arguments go to :class:`ResNet` (and ``width_mult`` as for ``resnet56``)."""
    return _thin_resnet(56, **_plain(kwargs))


@register_model
def resnet110(*, width_mult: float = 1.0, **kwargs: Any) -> ResNet:
    """Thin CIFAR ResNet-110 (widths 16-32-64 times ``width_mult``).
    Other keyword arguments go to :class:`ResNet`."""
    return _thin_resnet(110, width_mult=width_mult, **kwargs)


@register_model
def plain110(**kwargs: Any) -> ResNet:
    """Plain (shortcut-free) thin CIFAR network with ResNet-110's layout.
    Keyword arguments go to :class:`ResNet` (and ``width_mult`` as for ``resnet110``)."""
    return _thin_resnet(110, **_plain(kwargs))
