"""Dirac-parametrised convolution for plain students (docs/method.md section 2).

The effective kernel is ``alpha * I + beta * W`` where ``I`` is the fixed identity (Dirac)
kernel, ``alpha`` and ``beta`` are trainable per output channel, and ``W`` is an ordinary kernel.
When input and output channel counts differ, ``I`` is a partial identity (channel ``c`` maps to
channel ``c`` for ``c < min(in, out)``); at stride 2 the identity subsamples. The parametrisation
folds exactly into one ordinary convolution for deployment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ModelError


def dirac_kernel(out_channels: int, in_channels: int, kernel_size: tuple[int, int]) -> Tensor:
    """Identity kernel of shape ``(out, in, kh, kw)``: 1 at the centre of channel ``c -> c``."""
    kh, kw = kernel_size
    if kh % 2 == 0 or kw % 2 == 0:
        raise ModelError(f"Dirac kernels need odd kernel sizes, got {kernel_size}")
    kernel = torch.zeros(out_channels, in_channels, kh, kw)
    n = min(out_channels, in_channels)
    idx = torch.arange(n)
    kernel[idx, idx, kh // 2, kw // 2] = 1.0
    return kernel


class DiracConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose kernel is ``alpha * I + beta * W`` (DiracNets-style).

    ``alpha`` (init 1) and ``beta`` (init 0.1) have one entry per output channel and should be
    excluded from weight decay (see :func:`resdist.engine.optim.param_groups`). Grouped
    convolutions are not supported.
    """

    no_weight_decay_params = ("alpha", "beta")

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        alpha_init: float = 1.0,
        beta_init: float = 0.1,
    ) -> None:
        if groups != 1:
            raise ModelError("DiracConv2d supports groups=1 only")
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=bias,
        )
        self.alpha = nn.Parameter(torch.full((out_channels,), float(alpha_init)))
        self.beta = nn.Parameter(torch.full((out_channels,), float(beta_init)))
        self.register_buffer(
            "identity", dirac_kernel(out_channels, in_channels, self.kernel_size), persistent=False
        )

    def effective_weight(self) -> Tensor:
        """The ordinary kernel this layer computes with: ``alpha * I + beta * W``."""
        return (
            self.alpha.view(-1, 1, 1, 1) * self.identity.to(self.weight.dtype)
            + self.beta.view(-1, 1, 1, 1) * self.weight
        )

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(
            x, self.effective_weight(), self.bias, self.stride, self.padding, self.dilation, 1
        )

    @torch.no_grad()
    def to_conv(self) -> nn.Conv2d:
        """Return an ``nn.Conv2d`` with the folded kernel (same outputs, no Dirac parameters)."""
        conv = nn.Conv2d(
            self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
            padding=self.padding, dilation=self.dilation, bias=self.bias is not None,
        ).to(device=self.weight.device, dtype=self.weight.dtype)
        conv.weight.copy_(self.effective_weight())
        if self.bias is not None:
            conv.bias.copy_(self.bias)
        return conv


def fold_dirac(model: nn.Module) -> nn.Module:
    """Replace every :class:`DiracConv2d` in ``model`` (in place) by an equivalent ``nn.Conv2d``."""
    for name, child in list(model.named_children()):
        if isinstance(child, DiracConv2d):
            setattr(model, name, child.to_conv())
        else:
            fold_dirac(child)
    return model
