"""Gradient accumulation: k micro-batches make one optimiser step over their union."""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from resdist.config import Config
from resdist.engine.trainer import accumulation_step, train


class _Objective(nn.Module):
    """A batch-independent toy objective (no BatchNorm): mean cross-entropy of a small MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x, y):
        logits = self.net(x)
        return {"loss": F.cross_entropy(logits, y), "logits": logits}


def _run(micro: int, x, y, steps: int = 3) -> dict:
    torch.manual_seed(0)
    obj = _Objective()
    opt = torch.optim.SGD(obj.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                          weight_decay=1e-3)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(steps):
        accumulation_step(obj, opt, scaler, list(zip(x.chunk(micro), y.chunk(micro))))
    return obj.state_dict()


def test_accumulating_k_micro_batches_equals_one_k_times_batch():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
    one = _run(1, x, y)
    for k in (2, 3, 4):
        acc = _run(k, x, y)
        for name in one:
            torch.testing.assert_close(acc[name], one[name], atol=1e-6, rtol=1e-5, msg=name)


def test_ddp_gradients_are_synchronised_only_on_the_last_micro_batch():
    obj = _Objective()
    calls = []

    @contextlib.contextmanager
    def no_sync():
        calls.append("no_sync")
        yield

    obj.no_sync = no_sync  # what DistributedDataParallel offers
    opt = torch.optim.SGD(obj.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
    outs = accumulation_step(obj, opt, scaler, list(zip(x.chunk(4), y.chunk(4))))
    assert len(outs) == 4 and calls == ["no_sync"] * 3


def test_trainer_steps_once_per_group_of_micro_batches(tmp_path, tiny_run):
    # 128 images / 32 per batch = 4 batches per epoch; accum_steps 2 -> 2 optimiser steps per
    # epoch. OneCycleLR raises if stepped more often than it was sized for.
    cfg = Config.from_dict(tiny_run).override([f"train.out={tmp_path}", "train.accum_steps=2"])
    result = train(cfg)
    ckpt = torch.load(tmp_path / "last.pth", weights_only=False)
    assert ckpt["scheduler"]["last_epoch"] == 2 * 2
    assert ckpt["optimizer"]["state"][0]["momentum_buffer"] is not None
    assert len(result.history) == 2
