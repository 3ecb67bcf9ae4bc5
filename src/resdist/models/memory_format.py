"""Channels-last memory format, with the one convolution shape oneDNN gets wrong kept in NCHW.

oneDNN's CPU kernel for the weight gradient of a 1x1 convolution with stride > 1 in
channels-last (NHWC) layout writes past its workspace when the convolution has fewer input
channels than the kernel's channel block (oneDNN issue 6035, "1x1 convolution backward_weights
writes past the rtus workspace"). PyTorch reaches it through its mkldnn convolution: the result
is a crash (double free, segmentation fault), a hang with several threads, or, on some machines,
a weight gradient whose every element is wrong. A thin ResNet's downsample projection (for
example ``width_mult=0.25``: 4 input channels) is exactly such a convolution.

:func:`to_channels_last` converts a module as ``module.to(memory_format=torch.channels_last)``
does, except for those convolutions: their weights stay in NCHW and a forward pre-hook makes
their input contiguous in NCHW, so PyTorch runs them on the NCHW kernel, which is correct. The
condition is the convolution's shape only, never the machine: the block is 8 channels on AVX2
kernels and 16 on AVX-512 ones, and the guard uses the larger everywhere, so every CPU (and a
GPU, where the cost is one small layout copy) computes the same thing.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: The largest input-channel block of oneDNN's 1x1 convolution kernels (AVX-512; AVX2's is 8).
#: A strided 1x1 convolution with fewer input channels per group than this is kept in NCHW.
ONEDNN_CHANNEL_BLOCK = 16


def is_defective_channels_last_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a convolution oneDNN may get wrong in channels-last: a 2-d 1x1
    convolution with a stride above 1 and fewer than :data:`ONEDNN_CHANNEL_BLOCK` input channels
    per group."""
    if not isinstance(module, nn.Conv2d):
        return False
    return (tuple(module.kernel_size) == (1, 1) and max(module.stride) > 1
            and module.in_channels // module.groups < ONEDNN_CHANNEL_BLOCK)


def _nchw(t: Tensor) -> Tensor:
    """``t`` with NCHW strides. ``Tensor.contiguous`` ignores the strides of size-1 dimensions
    and so leaves a channels-last 1x1 kernel as it is, which PyTorch still reads as channels-last:
    compare the strides themselves."""
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= size
    if t.stride() == tuple(reversed(strides)):
        return t
    return t.clone(memory_format=torch.contiguous_format)


def _nchw_input(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return (_nchw(args[0]), *args[1:])


def to_channels_last(module: nn.Module) -> list[str]:
    """Put ``module``'s parameters and buffers in channels-last layout, except the convolutions
    of :func:`is_defective_channels_last_conv`, which stay in NCHW (weights, input and so output).

    Converts in place (parameters keep their identity, so an optimiser built before still holds
    them) and returns the names of the convolutions kept in NCHW. Calling it again is harmless.
    """
    module.to(memory_format=torch.channels_last)
    kept: list[str] = []
    for name, sub in module.named_modules():
        if not is_defective_channels_last_conv(sub):
            continue
        sub.weight.data = _nchw(sub.weight.data)
        if not getattr(sub, "_resdist_nchw_input", False):
            sub.register_forward_pre_hook(_nchw_input)
            sub._resdist_nchw_input = True
        kept.append(name)
    return kept


def channels_last_note(kept: list[str]) -> str | None:
    """One line saying which convolutions :func:`to_channels_last` kept in NCHW, or ``None``."""
    if not kept:
        return None
    first = ", ".join(kept[:3]) + (", ..." if len(kept) > 3 else "")
    return (f"channels-last: {len(kept)} strided 1x1 convolution(s) with fewer than "
            f"{ONEDNN_CHANNEL_BLOCK} input channels kept in NCHW ({first}): oneDNN computes "
            "their weight gradient wrongly in channels-last")
