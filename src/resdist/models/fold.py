"""Model transforms: fold Dirac kernels, RepVGG-style branches and BatchNorm into the convolutions, calibrate BatchNorm.

``to_deploy(model)`` returns a standard conv(-bias)-ReLU network computing the same function as
``model.eval()`` (docs/method.md section 7). ``calibrate_bn`` re-estimates BatchNorm statistics from
random inputs so that randomly initialised networks have sane activation scales when timed.
Training uses these transforms too: a frozen teacher computes through its folded copy.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor, nn

from .dirac import fold_dirac
from .errors import ModelError
from .repvgg import fold_repvgg
from .timm_adapter import reparameterize_timm

__all__ = ["calibrate_bn", "fold_batchnorms", "fuse_conv_bn", "to_deploy"]


@torch.no_grad()
def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new ``nn.Conv2d`` (with bias) equal to ``bn(conv(x))`` with ``bn`` in eval mode.

    ``W' = W * g / sqrt(v + eps)`` per output channel and ``b' = (b - m) * g / sqrt(v + eps) + beta``
    where ``m``, ``v`` are the running statistics and ``g``, ``beta`` the affine parameters.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    if conv.out_channels != bn.num_features:
        raise ModelError(
            f"conv has {conv.out_channels} output channels but BatchNorm has {bn.num_features}"
        )
    weight = conv.weight
    dtype = weight.dtype
    var = bn.running_var.to(torch.float64)
    mean = bn.running_mean.to(torch.float64)
    gamma = bn.weight.to(torch.float64) if bn.weight is not None else torch.ones_like(var)
    beta = bn.bias.to(torch.float64) if bn.bias is not None else torch.zeros_like(var)
    scale = gamma / torch.sqrt(var + bn.eps)
    bias = conv.bias.to(torch.float64) if conv.bias is not None else torch.zeros_like(mean)

    fused = nn.Conv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
        padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
        padding_mode=conv.padding_mode,
    ).to(device=weight.device, dtype=dtype)
    fused.weight.copy_((weight.to(torch.float64) * scale.view(-1, 1, 1, 1)).to(dtype))
    fused.bias.copy_(((bias - mean) * scale + beta).to(dtype))
    return fused


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and isinstance(bn, nn.BatchNorm2d)
        and bn.running_mean is not None
        and conv.out_channels == bn.num_features
    )


def fold_batchnorms(module: nn.Module) -> nn.Module:
    """Fold every BatchNorm2d that directly follows a convolution into it, in place.

    Pairs are found structurally, following torchvision/timm conventions: consecutive
    ``(Conv2d, BatchNorm2d)`` children of an ``nn.Sequential`` (e.g. ``downsample[0]/[1]``), and
    children named ``convX`` / ``bnX`` with the same suffix (``conv1/bn1`` .. ``conv3/bn3``) in
    any other module; a ``convX`` that is an ``nn.Sequential`` ending in a convolution (ResNet-D's
    deep stem) folds that last convolution with ``bnX``. The conv is replaced by a biased conv and the BatchNorm by ``nn.Identity``;
    BatchNorms that follow no convolution are left as they are.
    """
    children = dict(module.named_children())
    if isinstance(module, nn.Sequential):
        names = list(children)
        for a, b in zip(names, names[1:]):
            conv, bn = getattr(module, a), getattr(module, b)
            if _foldable(conv, bn):
                setattr(module, a, fuse_conv_bn(conv, bn))
                setattr(module, b, nn.Identity())
    else:
        for name in children:
            if not name.startswith("conv"):
                continue
            bn_name = "bn" + name[len("conv"):]
            conv, bn = getattr(module, name), getattr(module, bn_name, None)
            owner, last = module, name
            if isinstance(conv, nn.Sequential) and len(conv):
                owner, last = conv, str(len(conv) - 1)
                conv = conv[-1]
            if bn is not None and _foldable(conv, bn):
                setattr(owner, last, fuse_conv_bn(conv, bn))
                setattr(module, bn_name, nn.Identity())
    for child in module.children():
        fold_batchnorms(child)
    return module


def _single_float_dtype(model: nn.Module) -> torch.dtype | None:
    """The one floating-point dtype of all of ``model``'s parameters and buffers, else None."""
    dtypes = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()}
    return dtypes.pop() if len(dtypes) == 1 else None


def _folded(model: nn.Module, **to: torch.device | torch.dtype) -> nn.Module:
    """A folded deep copy of ``model``, first moved with ``.to(**to)`` when given."""
    deployed = copy.deepcopy(model).eval()
    if to:
        deployed.to(**to)
    fold_dirac(deployed)
    fold_repvgg(deployed)
    reparameterize_timm(deployed)  # timm's RepVGG / MobileOne blocks, by timm's own code
    fold_batchnorms(deployed)
    return deployed


@torch.no_grad()
def _fold_error(model: nn.Module, deployed64: nn.Module, example_input: Tensor,
                device: torch.device) -> float:
    """``max|folded - original| / max|original|`` with both networks computing in float64."""
    reference = copy.deepcopy(model).to(device=device, dtype=torch.float64).eval()
    x = example_input.to(device)
    x = x.double() if x.is_floating_point() else x
    ref, out = reference(x), deployed64(x)
    return (out - ref).abs().max().item() / max(ref.abs().max().item(), 1e-300)


def to_deploy(
    model: nn.Module, example_input: Tensor | None = None, rtol: float = 1e-5
) -> nn.Module:
    """Deploy form of ``model``: a deep copy in eval mode with Dirac convs, RepVGG-style branches
    (resdist's, and timm's re-parameterisable blocks through timm's ``reparameterize_model``)
    and BatchNorms folded.

    The original is not modified. The class is kept, so ``forward`` (and the staged contract)
    still work; the result has no ``DiracConv2d`` or ``RepVGGConv2d`` (timm's RepVGG and
    MobileOne blocks are switched to their deploy form by timm's own code) and, for staged
    ResNet-layout models, no ``BatchNorm2d`` left.

    If ``example_input`` is given, the fold is checked: it is done in float64, the folded and the
    original eval-mode network both compute ``example_input`` in float64, and a
    :class:`~resdist.models.errors.ModelError` is raised when the outputs differ by more than
    ``rtol`` times the largest output magnitude; the checked network is then returned in the
    model's own dtype (its weights rounded once). Comparing in float64 keeps the check
    independent of depth: a deep plain network amplifies float32 rounding (a BN-calibrated
    plain-110 differs from its own fold by up to 7% of its output scale in float32, by 1e-9 to
    5e-8 in float64), while a wrong fold differs by far more than ``rtol``. A model whose
    parameters mix floating-point dtypes is folded in its own dtypes and compared in float64.
    """
    dtype = _single_float_dtype(model)
    if example_input is None:
        return _folded(model)
    if dtype is None:
        deployed = _folded(model)
        check = copy.deepcopy(deployed).double()
    else:
        place = _device(model, example_input)
        device = torch.device("cpu") if place.type == "mps" else place  # mps has no float64
        check = deployed = _folded(model, device=device, dtype=torch.float64)
    err = _fold_error(model, check, example_input, _device(check, example_input))
    if not err <= rtol:
        raise ModelError(
            f"the folded model differs from the original by {err:.3g} of its output scale (more "
            f"than {rtol:g}): a BatchNorm paired with a convolution it does not directly follow "
            "(convN/bnN by name, or neighbours in an nn.Sequential) cannot be folded; rename it")
    return deployed if dtype is None else deployed.to(device=place, dtype=dtype)


def _device(model: nn.Module, default: Tensor) -> torch.device:
    return next(iter(model.parameters()), default).device


@torch.no_grad()
def calibrate_bn(
    model: nn.Module,
    num_batches: int = 4,
    input_shape: Sequence[int] | None = None,
    batch_size: int = 16,
    batches: Iterable[Tensor] | None = None,
    seed: int = 0,
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics, in place; returns ``model`` in eval mode.

    Statistics are reset and then accumulated as an exact average (``momentum=None``) over
    ``num_batches`` forward passes in train mode, using the given ``batches`` or, without them,
    standard-normal inputs of shape ``(batch_size, *input_shape)``. Randomly initialised deep
    plain networks otherwise produce vanishing/denormal or huge activations in eval mode, which
    distorts latency measurements (docs/method.md section 7). No parameters are changed.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if batches is None:
        if input_shape is None:
            raise ModelError("calibrate_bn needs input_shape (C, H, W) or batches")
        if batch_size < 2:
            raise ModelError("calibrate_bn needs batch_size >= 2 for batch statistics")
        gen = torch.Generator().manual_seed(seed)
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.float32
        shape = (batch_size, *input_shape)
        batches = (
            torch.randn(shape, generator=gen).to(device=device, dtype=dtype)
            for _ in range(num_batches)
        )
    else:
        batches = (b for _, b in zip(range(num_batches), batches))
    momenta = {bn: bn.momentum for bn in bns}
    for bn in bns:
        if bn.track_running_stats:
            bn.reset_running_stats()
            bn.momentum = None
    model.train()
    seen = 0
    try:
        for x in batches:
            if isinstance(x, (tuple, list)):
                x = x[0]
            model(x)
            seen += 1
    finally:
        for bn, m in momenta.items():
            bn.momentum = m
        model.eval()
    if seen == 0:
        raise ModelError("calibrate_bn got no batches")
    return model
