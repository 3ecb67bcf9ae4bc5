"""A model's size at a glance: parameters, multiply-accumulates and per-stage output shapes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["ModelSummary", "count_macs", "summarize_model"]


@dataclass
class ModelSummary:
    """What :func:`summarize_model` measured for one ``(C, H, W)`` image."""

    params: int
    macs: int
    input_shape: list[int]
    stages: list[tuple[str, list[int]]] = field(default_factory=list)  # (name, [C, H, W])
    num_classes: int = 0

    def format(self) -> str:
        """A few lines for people."""
        lines = [f"input {'x'.join(map(str, self.input_shape))}: {self.params / 1e6:.3f} M "
                 f"parameters, {self.macs / 1e6:.1f} M MACs per image, "
                 f"{self.num_classes} classes"]
        lines += [f"  {name:<8} -> {'x'.join(map(str, shape))}" for name, shape in self.stages]
        return "\n".join(lines)


def count_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-accumulates of convolutions and linear layers in ``model(x)``, per sample."""
    total = 0

    def conv_hook(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out[0].numel() * (m.in_channels // m.groups) * kh * kw

    def linear_hook(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out[0].numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return total


def summarize_model(model: nn.Module, input_shape: Sequence[int]) -> ModelSummary:
    """Parameters, MACs and (for staged models: ``forward_stem``, ``forward_stages``,
    ``num_stages``) the output shape of the stem and of every stage, for one image of
    ``input_shape`` ``(C, H, W)``. Runs the model in eval mode on zeros; its mode is restored."""
    shape = [int(s) for s in input_shape]
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(1, *shape)
        macs = count_macs(model, x)
        stages: list[tuple[str, list[int]]] = []
        with torch.no_grad():
            if hasattr(model, "forward_stem") and hasattr(model, "num_stages"):
                h = model.forward_stem(x)
                stages.append(("stem", list(h.shape[1:])))
                for k in range(model.num_stages):
                    h = model.forward_stages(h, k, k + 1)
                    stages.append((f"stage {k + 1}", list(h.shape[1:])))
            out = model(x)
    finally:
        model.train(was_training)
    params = sum(p.numel() for p in model.parameters())
    return ModelSummary(params, macs, shape, stages, int(out.shape[-1]))
