"""ResNets and their plain (shortcut-free) counterparts, built by one builder.

Layout and parameter names follow torchvision's ``models/resnet.py`` so that torchvision weights
load with ``strict=True``. ``shortcuts=False`` removes every shortcut (the plain CNN of the
paper); ``keep_downsample_shortcuts=True`` keeps only the projection shortcuts of stride-2 blocks,
as the authors' released code does.

Every model follows the *staged contract* (:class:`resdist.models.contract.StagedModel`) used by
:mod:`resdist.distill`, and adds ``forward_features``. Blocks expose ``forward_pre_relu`` (the
block output before its final ReLU) and ``last_bn()`` (the BatchNorm feeding that output).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from torch import Tensor, nn

from ..config import STEMS, check_choice
from .dirac import DiracConv2d
from .errors import ModelError
from .repvgg import repvgg_conv

ConvLayer = Callable[..., nn.Module]
NormLayer = Callable[[int], nn.Module]
Stem = Literal["imagenet", "cifar", "deep"]


def conv3x3(
    in_planes: int, out_planes: int, stride: int = 1, conv_layer: ConvLayer = nn.Conv2d
) -> nn.Module:
    """3x3 convolution with padding 1 and no bias."""
    return conv_layer(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(
    in_planes: int, out_planes: int, stride: int = 1, conv_layer: ConvLayer = nn.Conv2d
) -> nn.Module:
    """1x1 convolution with no bias."""
    return conv_layer(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def norm_after(conv: nn.Module, norm_layer: NormLayer, planes: int) -> nn.Module:
    """The normalisation following ``conv``: ``norm_layer(planes)``, or ``nn.Identity`` when the
    convolution normalises its own output (a RepVGG-style conv, whose branches carry BNs)."""
    return nn.Identity() if getattr(conv, "includes_norm", False) else norm_layer(planes)


class BasicBlock(nn.Module):
    """Two 3x3 convs; with ``shortcut=True`` the input (or its projection) is added at the end."""

    expansion: int = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        conv_layer: ConvLayer = nn.Conv2d,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride, conv_layer)
        self.bn1 = norm_after(self.conv1, norm_layer, planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes, 1, conv_layer)
        self.bn2 = norm_after(self.conv2, norm_layer, planes)
        self.downsample = downsample
        self.stride = stride
        self.shortcut = shortcut

    def last_bn(self) -> nn.Module:
        """The BatchNorm feeding the block's output (before the shortcut and final ReLU)."""
        return self.bn2

    def forward_pre_relu(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut:
            out = out + (x if self.downsample is None else self.downsample(x))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.forward_pre_relu(x))


class Bottleneck(nn.Module):
    """1x1 - 3x3 (stride here, ResNet v1.5) - 1x1 convs with expansion 4."""

    expansion: int = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        norm_layer: NormLayer = nn.BatchNorm2d,
        conv_layer: ConvLayer = nn.Conv2d,
        shortcut: bool = True,
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes, 1, conv_layer)
        self.bn1 = norm_after(self.conv1, norm_layer, planes)
        self.conv2 = conv3x3(planes, planes, stride, conv_layer)
        self.bn2 = norm_after(self.conv2, norm_layer, planes)
        self.conv3 = conv1x1(planes, planes * self.expansion, 1, conv_layer)
        self.bn3 = norm_after(self.conv3, norm_layer, planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.shortcut = shortcut

    def last_bn(self) -> nn.Module:
        """The BatchNorm feeding the block's output (before the shortcut and final ReLU)."""
        return self.bn3

    def forward_pre_relu(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.shortcut:
            out = out + (x if self.downsample is None else self.downsample(x))
        return out

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.forward_pre_relu(x))


class ResNet(nn.Module):
    """ResNet (``shortcuts=True``) or its plain counterpart (``shortcuts=False``).

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]`` for ResNet-18, ``[9, 9, 9]`` for ResNet-56.
        widths: base width of each stage (64/128/256/512 ImageNet-width, 16/32/64 thin).
        num_classes: classifier outputs.
        in_chans: input image channels (1 for Fashion-MNIST).
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max-pool), ``"cifar"`` (3x3/1 conv, no pool) or
            ``"deep"`` (ResNet-D's three 3x3 convs, the first of stride 2, + 3x3/2 max-pool;
            ``conv1`` is then an ``nn.Sequential`` named as timm names it).
        stem_width: stem output channels; defaults to ``widths[0]`` (the deep stem's inner
            convs have half as many).
        avg_down: projection shortcuts of stride-2 blocks average-pool 2x2 first and then apply
            a stride-1 1x1 conv (ResNet-D) instead of a strided 1x1 conv.
        shortcuts: keep the residual shortcuts (a ResNet) or remove them (a plain CNN).
        keep_downsample_shortcuts: for a plain CNN, keep the projection shortcuts of stride-2
            blocks (the authors' released code) instead of removing everything.
        dirac: use :class:`DiracConv2d` for block convolutions (plain students only).
        repvgg: train every 3x3 convolution (blocks and the cifar/deep stem) as RepVGG-style
            3x3+BN, 1x1+BN and identity+BN branches (:class:`~resdist.models.repvgg.RepVGGConv2d`;
            plain students only); the BatchNorm after each such conv becomes ``nn.Identity``.
        norm_layer: normalisation layer factory, ``nn.BatchNorm2d`` by default.
        zero_init_residual: zero the last BN of each residual block (ignored for plain blocks).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 1000,
        in_chans: int = 3,
        stem: Stem = "imagenet",
        stem_width: int | None = None,
        shortcuts: bool = True,
        keep_downsample_shortcuts: bool = False,
        dirac: bool = False,
        repvgg: bool = False,
        norm_layer: NormLayer | None = None,
        zero_init_residual: bool = False,
        avg_down: bool = False,
    ) -> None:
        super().__init__()
        if len(layers) != len(widths):
            raise ModelError(f"layers {list(layers)} and widths {list(widths)} differ in length")
        check_choice("stem", stem, STEMS, "stem")
        if in_chans < 1 or num_classes < 1:
            raise ModelError(f"in_chans and num_classes must be >= 1, got {in_chans}, {num_classes}")
        if shortcuts and keep_downsample_shortcuts:
            raise ModelError("keep_downsample_shortcuts only applies to plain networks (shortcuts=False)")
        if dirac and repvgg:
            raise ModelError("dirac and repvgg are two parametrisations of the same convs: "
                             "choose one")
        norm_layer = norm_layer or nn.BatchNorm2d
        self._norm_layer = norm_layer
        self._conv_layer: ConvLayer = (DiracConv2d if dirac else repvgg_conv if repvgg
                                       else nn.Conv2d)
        stem_conv: ConvLayer = repvgg_conv if repvgg else nn.Conv2d
        self.block = block
        self.shortcuts = shortcuts
        self.keep_downsample_shortcuts = keep_downsample_shortcuts
        self.dirac = dirac
        self.repvgg = repvgg
        self.stem_type = stem
        self.avg_down = avg_down
        self.inplanes = stem_width or widths[0]

        if stem == "imagenet":
            self.conv1: nn.Module = nn.Conv2d(in_chans, self.inplanes, 7, stride=2, padding=3,
                                              bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        elif stem == "deep":
            inner = max(1, self.inplanes // 2)
            first, second = conv3x3(in_chans, inner, 2, stem_conv), conv3x3(inner, inner, 1, stem_conv)
            self.conv1 = nn.Sequential(
                first, norm_after(first, norm_layer, inner), nn.ReLU(inplace=True),
                second, norm_after(second, norm_layer, inner), nn.ReLU(inplace=True),
                conv3x3(inner, self.inplanes, 1, stem_conv),
            )
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = conv3x3(in_chans, self.inplanes, 1, stem_conv)
            self.maxpool = nn.Identity()
        last = self.conv1[-1] if isinstance(self.conv1, nn.Sequential) else self.conv1
        self.bn1 = norm_after(last, norm_layer, self.inplanes)
        self.relu = nn.ReLU(inplace=True)

        self.num_stages = len(layers)
        self.stage_channels: list[int] = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            setattr(self, f"layer{i + 1}", self._make_layer(block, w, n, stride=1 if i == 0 else 2))
            self.stage_channels.append(w * block.expansion)
        self.num_features = self.stage_channels[-1]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.num_features, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual and shortcuts:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)) and m.last_bn().weight is not None:
                    nn.init.constant_(m.last_bn().weight, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int
    ) -> nn.Sequential:
        layers = []
        for j in range(blocks):
            s = stride if j == 0 else 1
            out = planes * block.expansion
            needs_projection = s != 1 or self.inplanes != out
            has_shortcut = self.shortcuts or (self.keep_downsample_shortcuts and s != 1)
            downsample = None
            if has_shortcut and needs_projection:
                downsample = self._projection(self.inplanes, out, s)
            layers.append(
                block(
                    self.inplanes, planes, s, downsample, self._norm_layer, self._conv_layer,
                    shortcut=has_shortcut,
                )
            )
            self.inplanes = out
        return nn.Sequential(*layers)

    def _projection(self, inplanes: int, out: int, stride: int) -> nn.Sequential:
        """The projection shortcut: a strided 1x1 conv and BN, or with ``avg_down`` a 2x2
        average pool (an identity at stride 1), a 1x1 conv and BN (timm's names: 0, 1, 2)."""
        if not self.avg_down:
            return nn.Sequential(conv1x1(inplanes, out, stride), self._norm_layer(out))
        pool: nn.Module = nn.Identity() if stride == 1 else nn.AvgPool2d(
            2, stride, ceil_mode=True, count_include_pad=False)
        return nn.Sequential(pool, conv1x1(inplanes, out), self._norm_layer(out))

    # --- staged contract -------------------------------------------------------------------
    @property
    def stages(self) -> list[nn.Sequential]:
        """The residual stages, ``layer1 .. layerS``."""
        return [getattr(self, f"layer{i + 1}") for i in range(self.num_stages)]

    @property
    def stem(self) -> nn.Sequential:
        """conv1 - bn1 - relu - maxpool (a view over the registered modules)."""
        return nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool)

    @property
    def head(self) -> nn.Sequential:
        """Global average pool - flatten - fc (a view over the registered modules)."""
        return nn.Sequential(self.avgpool, nn.Flatten(1), self.fc)

    def forward_stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))

    def forward_stages(
        self, x: Tensor, start: int = 0, end: int | None = None, pre_relu: bool = False
    ) -> Tensor:
        """Run stages ``start .. end-1`` (0-based). ``pre_relu`` returns the last block's
        output before its final ReLU (the feature used by margin distillation)."""
        end = self.num_stages if end is None else end
        stages = self.stages[start:end]
        for i, stage in enumerate(stages):
            if pre_relu and i == len(stages) - 1:
                for blk in stage[:-1]:
                    x = blk(x)
                return stage[-1].forward_pre_relu(x)
            x = stage(x)
        return x

    def forward_features(self, x: Tensor) -> Tensor:
        """Stem and all stages: the final feature map ``(N, num_features, H', W')``."""
        return self.forward_stages(self.forward_stem(x))

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        x = self.avgpool(x).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))

    def last_bn(self) -> nn.Module:
        """The BatchNorm that produces the final pre-ReLU feature (margins come from it)."""
        return self.stages[-1][-1].last_bn()

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)

    def count_shortcut_adds(self) -> int:
        """Elementwise additions between feature maps in one forward pass."""
        return sum(int(b.shortcut) for stage in self.stages for b in stage)
