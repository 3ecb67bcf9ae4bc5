"""Optimiser and learning-rate schedules (docs/method.md section 5)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..config import SCHEDULES, OptimConfig, check_choice


def param_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into decayed and non-decayed groups.

    Parameters a module lists in ``no_weight_decay_params`` (the Dirac ``alpha``/``beta``) get no
    weight decay; everything else, BatchNorm included, gets ``weight_decay`` as in the released
    recipes.
    """
    decay, no_decay, seen = [], [], set()
    for mod in module.modules():
        skip = set(getattr(mod, "no_weight_decay_params", ()))
        for name, p in mod.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            (no_decay if name in skip else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(module: nn.Module, cfg: OptimConfig) -> torch.optim.SGD:
    """SGD (Nesterov by default) over ``module``'s trainable parameters."""
    return torch.optim.SGD(
        param_groups(module, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
    )


def lr_factor(cfg: OptimConfig, epochs: int) -> Callable[[float], float]:
    """Multiplier of the base LR as a function of (fractional) epoch.

    Raises:
        ConfigError: ``cfg.schedule`` is not one of the schedules resdist knows.
    """
    check_choice("optim.schedule", cfg.schedule, SCHEDULES, "schedule")

    def base(e: float) -> float:
        if cfg.schedule == "constant":
            return 1.0
        if cfg.schedule == "multistep":
            return cfg.gamma ** sum(e >= m * epochs for m in cfg.milestones)
        if cfg.schedule == "step":
            return cfg.gamma ** math.floor(e / max(cfg.step_size, 1))
        if cfg.schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(e / epochs, 1.0)))
        p = min(e / epochs, 1.0)  # onecycle: linear warm-up over 30% from lr/25, then cosine to ~0
        if p < 0.3:
            return 0.04 + 0.96 * p / 0.3
        return 0.5 * (1.0 + math.cos(math.pi * (p - 0.3) / 0.7)) + 1e-4

    def factor(e: float) -> float:
        warm = min(1.0, (e + 1e-9) / cfg.warmup_epochs) if cfg.warmup_epochs > 0 else 1.0
        return base(e) * warm

    return factor


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: OptimConfig, epochs: int, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-iteration ``LambdaLR`` following :func:`lr_factor`; call ``step()`` every batch."""
    factor = lr_factor(cfg, epochs)
    steps = max(1, steps_per_epoch)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: factor(it / steps))
