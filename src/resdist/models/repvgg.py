"""RepVGG-style re-parameterised convolution for plain students (docs/method.md section 2).

During training a 3x3 convolution is the sum of up to three branches, each with its own
BatchNorm (Ding et al., 2021, "RepVGG: Making VGG-style ConvNets Great Again"):

    y = BN_3(conv3x3(x)) + BN_1(conv1x1(x)) + BN_0(x)

where the identity branch ``BN_0(x)`` exists only when the input and output shapes match (same
channel count, stride 1). At evaluation every BatchNorm is an affine map, so the three branches
fold exactly into one 3x3 convolution with a bias (:meth:`RepVGGConv2d.to_conv`): the 1x1 kernel
is zero-padded to 3x3 and the identity is the Dirac kernel. The deployed network is the same
conv-ReLU stack as the plain student's.

The branches carry their own BatchNorms, so a block built with this layer drops the BatchNorm it
would otherwise put after the convolution (``includes_norm``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .dirac import dirac_kernel
from .errors import ModelError

__all__ = ["RepVGGConv2d", "fold_repvgg", "repvgg_conv"]


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@torch.no_grad()
def _bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Per-channel ``(scale, shift)`` of an eval-mode BatchNorm, in float64."""
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError("cannot fold a RepVGG branch whose BatchNorm keeps no running statistics")
    var = bn.running_var.to(torch.float64)
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    return scale, beta - bn.running_mean.to(torch.float64) * scale


class RepVGGConv2d(nn.Module):
    """A ``k x k`` convolution trained as ``k x k``+BN, 1x1+BN and (shapes permitting) identity+BN.

    Takes ``nn.Conv2d``'s arguments for an odd square kernel with "same" padding
    (``padding == kernel_size // 2``), ``groups=1``, ``dilation=1`` and no bias (the branches'
    BatchNorms supply it). Inputs ``(N, in_channels, H, W)``, outputs
    ``(N, out_channels, H / stride, W / stride)``.

    Attributes:
        conv_kxk, bn_kxk: the main branch.
        conv_1x1, bn_1x1: the 1x1 branch (same stride).
        bn_identity: the identity branch's BatchNorm, or ``None`` when shapes differ.
    """

    includes_norm = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        k = _pair(kernel_size)
        if k[0] != k[1] or k[0] % 2 == 0 or k[0] < 3:
            raise ModelError(f"RepVGGConv2d needs an odd square kernel of at least 3, got {k}")
        pad = _pair(k[0] // 2 if padding is None else padding)
        if pad != (k[0] // 2, k[0] // 2):
            raise ModelError(f"RepVGGConv2d needs padding {k[0] // 2} for a {k[0]}x{k[0]} kernel, "
                             f"got {pad}")
        if bias:
            raise ModelError("RepVGGConv2d takes no bias: its branches' BatchNorms supply one")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = k, _pair(stride), pad
        self.conv_kxk = nn.Conv2d(in_channels, out_channels, k, self.stride, pad, bias=False)
        self.bn_kxk = nn.BatchNorm2d(out_channels)
        self.conv_1x1 = nn.Conv2d(in_channels, out_channels, 1, self.stride, 0, bias=False)
        self.bn_1x1 = nn.BatchNorm2d(out_channels)
        has_identity = in_channels == out_channels and self.stride == (1, 1)
        self.bn_identity = nn.BatchNorm2d(out_channels) if has_identity else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn_kxk(self.conv_kxk(x)) + self.bn_1x1(self.conv_1x1(x))
        if self.bn_identity is not None:
            out = out + self.bn_identity(x)
        return out

    @torch.no_grad()
    def folded_kernel_bias(self) -> tuple[Tensor, Tensor]:
        """The ``(kernel, bias)`` of the one convolution equal to this layer in eval mode, in
        float64: the sum over branches of ``kernel * scale`` and ``shift`` of their BatchNorms."""
        kh, kw = self.kernel_size
        scale, bias = _bn_scale_shift(self.bn_kxk)
        kernel = self.conv_kxk.weight.to(torch.float64) * scale.view(-1, 1, 1, 1)
        scale, shift = _bn_scale_shift(self.bn_1x1)
        one = self.conv_1x1.weight.to(torch.float64) * scale.view(-1, 1, 1, 1)
        kernel[:, :, kh // 2, kw // 2] += one[:, :, 0, 0]
        bias = bias + shift
        if self.bn_identity is not None:
            scale, shift = _bn_scale_shift(self.bn_identity)
            eye = dirac_kernel(self.out_channels, self.in_channels, self.kernel_size)
            kernel += eye.to(kernel.device, torch.float64) * scale.view(-1, 1, 1, 1)
            bias = bias + shift
        return kernel, bias

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` (with bias) computing what this layer computes in eval mode."""
        weight = self.conv_kxk.weight
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride,
                         self.padding, bias=True).to(device=weight.device, dtype=weight.dtype)
        kernel, bias = self.folded_kernel_bias()
        conv.weight.copy_(kernel.to(weight.dtype))
        conv.bias.copy_(bias.to(weight.dtype))
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, identity={self.bn_identity is not None}")


def repvgg_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    bias: bool = False,
) -> nn.Module:
    """Convolution factory of a RepVGG-style student: :class:`RepVGGConv2d` for 3x3 kernels, an
    ordinary ``nn.Conv2d`` for every other size (the 1x1 convs of a bottleneck stay as they are)."""
    if _pair(kernel_size) == (3, 3):
        return RepVGGConv2d(in_channels, out_channels, 3, stride, padding, bias)
    return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                     bias=bias)


def fold_repvgg(model: nn.Module) -> nn.Module:
    """Replace every :class:`RepVGGConv2d` in ``model`` (in place) by its folded ``nn.Conv2d``.

    The BatchNorm statistics are used as they are, so fold a model in eval mode (as
    :func:`resdist.models.fold.to_deploy` does)."""
    for name, child in list(model.named_children()):
        if isinstance(child, RepVGGConv2d):
            setattr(model, name, child.to_conv())
        else:
            fold_repvgg(child)
    return model
