"""Mixed precision, channels_last and torch.compile: short CPU runs stay finite and sane."""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch import nn

from resdist.config import Config
from resdist.data import build_data
from resdist.distill import CrossEntropy
from resdist.engine.distributed import DistInfo
from resdist.engine.trainer import Trainer, train


def _cfg(out, **sets) -> Config:
    cfg = Config.from_dict({
        "data": {"name": "synthetic", "synthetic_samples": 96, "synthetic_size": 8,
                 "synthetic_channels": 1, "synthetic_classes": 4, "batch_size": 16,
                 "limit_train": 32, "limit_test": 32, "eval_batch_size": 16},
        "model": {"name": "plain20", "width_mult": 0.25, "dirac": True},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 1, "out": str(out), "progress": False, "tensorboard": False,
                  "device": "cpu"},
    })
    return cfg.override([f"{k}={v}" for k, v in sets.items()])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    train(_cfg(out, **{"model.name": "resnet20", "model.dirac": False}))
    return str(out / "last.pth")


def _finite(row: dict) -> bool:
    keys = [k for k in row if k.startswith(("train_", "test_")) and k != "test_samples"]
    return bool(keys) and all(math.isfinite(row[k]) for k in keys)


@pytest.mark.parametrize("method", ["ce", "jointrd"])
@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_autocast_run_is_finite_and_close_to_fp32(tmp_path, teacher, method, amp):
    sets = {} if method == "ce" else {"distill.method": "jointrd", "teacher.checkpoint": teacher}
    ref = train(_cfg(tmp_path / "fp32", **sets)).final
    row = train(_cfg(tmp_path / amp, **sets, **{"train.amp": amp})).final
    assert _finite(row), row
    assert row["test_samples"] == ref["test_samples"] > 0  # evaluation ran (under autocast)
    # 2 steps in reduced precision: the loss stays near the fp32 one
    assert row["train_loss"] == pytest.approx(ref["train_loss"], rel=0.05)
    if method == "jointrd":
        assert {"train_ce_paths", "train_feat_student"} <= set(row)


@pytest.mark.parametrize("method", ["ce", "jointrd"])
def test_channels_last_matches_contiguous(tmp_path, teacher, method):
    sets = {} if method == "ce" else {"distill.method": "jointrd", "teacher.checkpoint": teacher}
    ref = train(_cfg(tmp_path / "nchw", **sets)).final
    row = train(_cfg(tmp_path / "nhwc", **sets, **{"train.channels_last": True})).final
    assert _finite(row)
    # the same arithmetic in another memory layout: equal up to float summation order
    for k in ("train_loss", "test_loss"):
        assert row[k] == pytest.approx(ref[k], rel=1e-3), k


def test_compiled_jointrd_step_is_finite(tmp_path, monkeypatch):
    # the trainer's torch.compile path over the whole JointRD objective; the aot_eager backend
    # traces forward and backward like inductor but skips C++ code generation (see below). The
    # 8-layer pair has every part of the objective (three stages, a projection shortcut) in a
    # graph 2.5x shorter to trace than the 20-layer one's
    train(_cfg(tmp_path / "teacher", **{"model.name": "resnet8", "model.dirac": False}))
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda m, **kw: real_compile(m, backend="aot_eager"))
    torch._dynamo.reset()
    row = train(_cfg(tmp_path / "student", **{
        "train.compile": True, "distill.method": "jointrd", "model.name": "plain8",
        "teacher.checkpoint": tmp_path / "teacher" / "last.pth"})).final
    torch._dynamo.reset()
    assert _finite(row)
    assert {"train_ce_paths", "train_feat_student"} <= set(row)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_inductor_compiled_step_bf16_channels_last(tmp_path):
    # inductor generates and compiles C++ kernels (~20 s even for this one-conv network); the
    # Trainer compiles the step exactly as train() does
    cfg = _cfg(tmp_path, **{"train.compile": True, "train.channels_last": True,
                            "train.amp": "bf16"})
    data = build_data(cfg.data)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    objective = CrossEntropy(net).to(memory_format=torch.channels_last)
    torch._dynamo.reset()
    trainer = Trainer(cfg, objective, data, torch.device("cpu"), DistInfo(), {})
    row = trainer.fit().final
    torch._dynamo.reset()
    assert _finite(row)
    assert net[0].weight.is_contiguous(memory_format=torch.channels_last)
