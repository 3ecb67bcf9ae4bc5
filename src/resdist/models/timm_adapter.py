"""timm's ResNets under the staged contract: ``create_model("timm:resnet50d")``.

timm's ``ResNet`` shares torchvision's layout and parameter names, and its ResNet-D variants use
a deep stem and average-pool downsampling, which :class:`~resdist.models.resnet.ResNet` builds
too (``stem="deep"``, ``avg_down=True``). A timm ResNet is therefore rebuilt as a resdist
``ResNet`` with the same tensors, and so can be a JointRD teacher; its plain counterpart (the
same layout without shortcuts) is the student. Variants resdist does not build (grouped or wide
bottlenecks, attention blocks, anti-aliasing, other activations or norms, dilation, tiered
stems) are refused in one line. timm is an optional dependency: ``pip install 'resdist[timm]'``.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

import torch
from torch import nn

from .errors import ModelError
from .resnet import BasicBlock, Bottleneck, ResNet

#: The prefix that names a timm architecture in resdist (``--teacher timm:resnet50d``).
PREFIX = "timm:"


def is_timm_name(name: object) -> bool:
    """Whether ``name`` names a timm architecture (``"timm:NAME"``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def _timm() -> ModuleType:
    try:
        return importlib.import_module("timm")
    except ImportError as e:
        raise ModelError(
            "timm models need the timm package: pip install 'resdist[timm]'"
        ) from e


def timm_architecture(name: str) -> str:
    """The timm architecture of ``"timm:NAME[.TAG]"`` (the tag, a weights name, is dropped).

    Raises:
        ModelError: timm is not installed, or does not know the architecture.
    """
    arch = name.removeprefix(PREFIX).split(".", 1)[0]
    timm = _timm()
    if not arch or not timm.is_model(arch):
        close = timm.list_models(f"*{arch[:6]}*")[:5] if arch else []
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise ModelError(f"timm has no model {arch!r}{hint}")
    return arch


def _kind(module: nn.Module | None) -> str:
    return "none" if module is None else type(module).__name__


def timm_layout(model: nn.Module) -> dict[str, Any]:
    """The :class:`ResNet` arguments that rebuild the timm ResNet ``model`` with its names.

    Raises:
        ModelError: ``model`` is not a timm ResNet, or a variant resdist does not build.
    """
    name = type(model).__name__
    try:
        stages = [getattr(model, f"layer{i}") for i in range(1, 5)]
        conv1, fc, maxpool = model.conv1, model.fc, model.maxpool
    except AttributeError as e:
        raise ModelError(f"{name} does not have the ResNet layout") from e
    blocks = [b for stage in stages for b in stage]
    kind = type(blocks[0]).__name__
    if kind not in ("BasicBlock", "Bottleneck") or any(type(b).__name__ != kind for b in blocks):
        raise ModelError(f"{name}: block type {kind} is not one resdist builds")
    block = BasicBlock if kind == "BasicBlock" else Bottleneck
    for b in blocks:
        _check_block(b, block)
    widths = [stage[0].conv1.out_channels for stage in stages]
    layout: dict[str, Any] = {
        "block": block, "layers": [len(s) for s in stages], "widths": widths,
        "num_classes": fc.out_features if isinstance(fc, nn.Linear) else None,
    }
    if layout["num_classes"] is None:
        raise ModelError(f"{name}: a model without a linear classifier is not one resdist builds")
    if isinstance(conv1, nn.Conv2d) and conv1.kernel_size == (7, 7):
        layout.update(stem="imagenet", in_chans=conv1.in_channels, stem_width=conv1.out_channels)
    elif isinstance(conv1, nn.Sequential) and _is_deep_stem(conv1):
        layout.update(stem="deep", in_chans=conv1[0].in_channels, stem_width=conv1[6].out_channels)
    else:
        raise ModelError(f"{name}: its stem is not one resdist builds (7x7 conv or ResNet-D's "
                         "deep stem)")
    if not (isinstance(maxpool, nn.MaxPool2d) and maxpool.kernel_size == 3
            and maxpool.stride == 2):
        raise ModelError(f"{name}: its stem pooling ({_kind(maxpool)}) is not a 3x3/2 max-pool")
    projections = [b.downsample for b in blocks if b.downsample is not None]
    layout["avg_down"] = any(len(d) == 3 for d in projections)
    for d in projections:
        if len(d) != (3 if layout["avg_down"] else 2):
            raise ModelError(f"{name}: mixed projection shortcuts are not a layout resdist builds")
    return layout


def _is_deep_stem(stem: nn.Sequential) -> bool:
    kinds = [type(m).__name__ for m in stem]
    if kinds != ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]:
        return False
    inner, out = stem[0].out_channels, stem[6].out_channels
    return stem[3].out_channels == inner and inner == max(1, out // 2) and stem[0].stride == (2, 2)


def _check_block(b: nn.Module, block: type[BasicBlock] | type[Bottleneck]) -> None:
    """Refuse what our blocks do not compute: attention, anti-aliasing, grouped or wide
    convolutions, dilation, activations other than ReLU, norms other than BatchNorm."""
    for attr in ("se", "attn", "aa"):
        extra = getattr(b, attr, None)
        if extra is not None and not isinstance(extra, nn.Identity):
            raise ModelError(f"blocks with {attr} ({_kind(extra)}) are not a layout resdist "
                             "builds")
    convs = [getattr(b, f"conv{i}") for i in range(1, 4) if hasattr(b, f"conv{i}")]
    if any(not isinstance(c, nn.Conv2d) or c.groups != 1 or c.dilation != (1, 1) for c in convs):
        raise ModelError("grouped, dilated or non-standard convolutions (ResNeXt, dilated "
                         "ResNets) are not a layout resdist builds")
    if block is Bottleneck and b.conv3.out_channels != 4 * b.conv1.out_channels:
        raise ModelError("wide bottlenecks (Wide ResNet) are not a layout resdist builds")
    for attr in ("act1", "act2", "act3"):
        act = getattr(b, attr, None)
        if act is not None and not isinstance(act, nn.ReLU):
            raise ModelError(f"blocks with {_kind(act)} activations are not a layout resdist "
                             "builds")
    for attr in ("bn1", "bn2", "bn3"):
        norm = getattr(b, attr, None)
        if norm is not None and type(norm) is not nn.BatchNorm2d:
            raise ModelError(f"blocks with {_kind(norm)} are not a layout resdist builds")


def _resnet(layout: dict[str, Any], **kwargs: Any) -> ResNet:
    layout = dict(layout)
    block, layers, widths = layout.pop("block"), layout.pop("layers"), layout.pop("widths")
    return ResNet(block, layers, widths, **{**layout, **kwargs})


def from_timm(model: nn.Module, *, shortcuts: bool = True, **overrides: Any) -> ResNet:
    """Rebuild the timm ResNet ``model`` as a resdist :class:`ResNet` with the same tensors.

    With ``shortcuts=False`` the plain counterpart is built and every tensor but the projection
    shortcuts is copied (a teacher-initialised student). ``overrides`` go to :class:`ResNet`
    (``dirac``, ``keep_downsample_shortcuts``).
    """
    ours = _resnet(timm_layout(model), shortcuts=shortcuts, **overrides)
    own = ours.state_dict()
    state = {k: v for k, v in model.state_dict().items() if k in own}
    ours.load_state_dict(state, strict=shortcuts)
    return ours


def create_timm_resnet(
    name: str, *, num_classes: int = 1000, in_chans: int = 3, pretrained: str | None = None,
    shortcuts: bool = True, **overrides: Any,
) -> ResNet:
    """Build ``timm:ARCH`` through timm and bring it under the staged contract.

    Args:
        name: ``"timm:ARCH"`` (or ``"ARCH"``), e.g. ``"timm:resnet50d"``.
        num_classes: classifier outputs.
        in_chans: input channels.
        pretrained: a timm weights tag (``"a1_in1k"``), or ``"DEFAULT"`` for timm's default
            weights of the architecture, fetched through timm's own loading (the Hugging Face
            hub cache); ``None`` for random weights.
        shortcuts: a ResNet (``True``) or its plain counterpart.
        overrides: further :class:`ResNet` arguments (``dirac``, ...); ``stem`` replaces the
            architecture's stem (``"cifar"`` for small images), for random weights only.

    Raises:
        ModelError: timm is missing, the architecture is unknown or not a ResNet resdist
            builds, or the weights cannot be fetched.
    """
    arch = timm_architecture(name)
    timm = _timm()
    stem = overrides.pop("stem", None)
    if pretrained is None or torch.get_default_device().type == "meta":
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes,
                                  in_chans=in_chans)
    else:
        tag = "" if pretrained.upper() == "DEFAULT" else f".{pretrained}"
        try:
            model = timm.create_model(arch + tag, pretrained=True, num_classes=num_classes,
                                      in_chans=in_chans)
        except Exception as e:  # unknown tag, offline, corrupt cache
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelError(
                f"could not load timm weights {arch}{tag or ' (default)'} ({first}); fetch "
                "them once with network access (timm caches them) or pass a state-dict file "
                "with --teacher-weights"
            ) from e
    try:
        layout = timm_layout(model)
    except ModelError as e:
        if is_reparameterisable(model):
            return _deploy_network(arch, model, shortcuts, stem, overrides)
        raise ModelError(f"timm:{arch}: {e}") from e
    if stem is None or stem == layout["stem"]:
        return from_timm(model, shortcuts=shortcuts, **overrides)
    if pretrained is not None:
        raise ModelError(f"the timm weights of {arch} have its {layout['stem']} stem, not "
                         f"{stem}: leave out --stem (or model.stem) to use them")
    return _resnet(layout, stem=stem, stem_width=None, shortcuts=shortcuts, **overrides)


#: What timm's re-parameterisable blocks implement to switch to their deploy form
#: (``timm.utils.model.reparameterize_model`` calls the first one a block has).
_REPARAM_HOOKS = ("fuse", "reparameterize", "switch_to_deploy")


def is_reparameterisable(model: nn.Module) -> bool:
    """Whether ``model`` holds timm blocks that re-parameterise for deployment (RepVGG,
    MobileOne, FastViT, ...): training-time branches that fold into one convolution."""
    return any(type(m).__module__.startswith("timm.") and
               any(callable(getattr(m, hook, None)) for hook in _REPARAM_HOOKS)
               for m in model.modules())


def _deploy_network(arch: str, model: nn.Module, shortcuts: bool, stem: str | None,
                    overrides: dict[str, Any]) -> nn.Module:
    """A timm network that is not a ResNet but re-parameterises for deployment, as timm builds
    it: resdist can profile and export it (:func:`reparameterize_timm` folds it), not use it
    as a teacher or student."""
    if not shortcuts or stem is not None or overrides:
        asked = ", ".join(["shortcuts=False"] * (not shortcuts) + [f"stem={stem}"] * bool(stem)
                          + list(overrides))
        raise ModelError(f"timm:{arch} is built as timm defines it (it re-parameterises for "
                         f"deployment); it takes no {asked}")
    return model


def reparameterize_timm(model: nn.Module) -> nn.Module:
    """Switch every timm re-parameterisable block of ``model`` to its deploy form, in place,
    through timm's own ``timm.utils.model.reparameterize_model``; other models are returned
    unchanged. Use it on a model in eval mode: the branches' BatchNorm statistics are folded."""
    if not is_reparameterisable(model):
        return model
    from timm.utils.model import reparameterize_model

    return reparameterize_model(model, inplace=True)


def plain_counterpart(name: str) -> str | None:
    """The registered resdist name of the plain student of ``timm:ARCH``
    (``timm:resnet50d -> plain50d``), or ``None`` if resdist registers no such layout."""
    arch = name.removeprefix(PREFIX).split(".", 1)[0]
    for depth in (18, 34, 50):
        for suffix in ("", "d"):
            if arch == f"resnet{depth}{suffix}":
                return f"plain{depth}{suffix}"
    return None
