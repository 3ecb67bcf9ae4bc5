"""Adapters that bring other libraries' ResNets under the staged contract."""

from __future__ import annotations

from torch import nn

from .errors import ModelError
from .resnet import BasicBlock, Bottleneck, ResNet


def from_torchvision(model: nn.Module, *, shortcuts: bool = True) -> ResNet:
    """Rebuild a torchvision ``ResNet`` as a resdist :class:`ResNet` with the same weights.

    The layout (block type, blocks per stage, widths, stem, classes, input channels) is read off
    the torchvision model; the result supports ``forward_stages``/``forward_pre_relu`` and so can
    serve as a JointRD teacher. With ``shortcuts=False`` the plain counterpart is built instead and
    every tensor except the projection shortcuts is copied (a teacher-initialised student).
    """
    try:
        stages = [getattr(model, f"layer{i}") for i in range(1, 5)]
        conv1, fc = model.conv1, model.fc
    except AttributeError as e:
        raise ModelError(f"{type(model).__name__} does not have torchvision's ResNet layout") from e
    first = stages[0][0]
    kind = type(first).__name__
    if kind not in ("BasicBlock", "Bottleneck"):
        raise ModelError(f"unsupported block type {kind}")
    block = BasicBlock if kind == "BasicBlock" else Bottleneck
    widths = [stage[0].conv1.out_channels for stage in stages]
    stem = "imagenet" if conv1.kernel_size == (7, 7) else "cifar"
    ours = ResNet(
        block, [len(s) for s in stages], widths, num_classes=fc.out_features,
        in_chans=conv1.in_channels, stem=stem, stem_width=conv1.out_channels, shortcuts=shortcuts,
    )
    if stem == "cifar" and not isinstance(getattr(model, "maxpool", None), nn.Identity):
        raise ModelError("a 3x3 stem with a max-pool is not a layout resdist builds")
    state = model.state_dict()
    own = ours.state_dict()
    ours.load_state_dict({k: v for k, v in state.items() if k in own}, strict=shortcuts)
    return ours
