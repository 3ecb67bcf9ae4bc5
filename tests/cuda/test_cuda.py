"""The CUDA tier: what CPU tests cannot show. Skipped without a GPU; ``make test-gpu`` runs it.

Each test trains or exports for real on the GPU, a few steps on tiny synthetic data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resdist.config import Config
from resdist.engine import load_checkpoint, model_from_checkpoint
from resdist.engine.trainer import train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

METHODS = ["ce", "kd", "feature-kd", "jointrd"]


@pytest.fixture(scope="module")
def gpu_run():
    return {
        "data": {"name": "synthetic", "synthetic_samples": 128, "synthetic_size": 16,
                 "synthetic_channels": 3, "synthetic_classes": 4, "batch_size": 32},
        "model": {"name": "plain20", "width_mult": 0.5},
        "optim": {"lr": 0.05, "schedule": "onecycle"},
        "train": {"epochs": 1, "progress": False, "tensorboard": False, "device": "cuda"},
    }


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, gpu_run) -> str:
    out = tmp_path_factory.mktemp("teacher")
    cfg = Config.from_dict(gpu_run).override([f"train.out={out}", "model.name=resnet20"])
    train(cfg)
    return str(out / "last.pth")


def _cfg(gpu_run, out: Path, teacher: str, method: str, *sets: str) -> Config:
    extra = [f"teacher.checkpoint={teacher}"] if method != "ce" else []
    return Config.from_dict(gpu_run).override(
        [f"train.out={out}", f"distill.method={method}", *extra, *sets])


def _finite_metrics(out: Path) -> dict:
    ckpt = load_checkpoint(out / "last.pth")
    for k in ("train_loss", "test_loss"):
        assert torch.isfinite(torch.tensor(ckpt.metrics[k])), k
    return ckpt


@pytest.mark.parametrize("amp", ["fp16", "bf16", "auto"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_under_autocast(tmp_path, gpu_run, teacher, method, amp):
    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no native bf16")
    train(_cfg(gpu_run, tmp_path, teacher, method, f"train.amp={amp}"))
    _finite_metrics(tmp_path)


def test_fp16_uses_a_grad_scaler_that_is_saved(tmp_path, gpu_run, teacher):
    train(_cfg(gpu_run, tmp_path, teacher, "jointrd", "train.amp=fp16"))
    ckpt = _finite_metrics(tmp_path)
    assert ckpt.scaler and ckpt.scaler["scale"] > 0


@pytest.mark.parametrize("method", ["ce", "jointrd"])
def test_channels_last_and_accumulation(tmp_path, gpu_run, teacher, method):
    train(_cfg(gpu_run, tmp_path, teacher, method, "train.channels_last=true",
               "train.accum_steps=2", "train.amp=auto"))
    _finite_metrics(tmp_path)


def test_compile(tmp_path, gpu_run, teacher):
    train(_cfg(gpu_run, tmp_path, teacher, "jointrd", "train.compile=true"))
    _finite_metrics(tmp_path)


def test_pinned_host_storage_feeds_the_gpu(tmp_path, gpu_run):
    # data.in_memory=false keeps the set on the host, pinned, copied per batch
    train(_cfg(gpu_run, tmp_path, "", "ce", "data.in_memory=false"))
    _finite_metrics(tmp_path)


def test_export_from_a_model_on_the_gpu(tmp_path, gpu_run):
    pytest.importorskip("onnxruntime")
    from resdist.deploy import export

    train(_cfg(gpu_run, tmp_path, "", "ce"))
    model = model_from_checkpoint(tmp_path / "last.pth").cuda()
    report = export(model, "onnx", tmp_path / "m.onnx", input_shape=(3, 16, 16))
    # the reference runs on the GPU, where convolutions may use TF32 (about 1e-3 relative)
    assert report.feature_adds == 0 and report.max_rel_error < 1e-2
    assert next(model.parameters()).is_cuda  # the caller's model stays where it was


def test_a_cuda_checkpoint_resumes_and_evaluates_on_cpu(tmp_path, gpu_run):
    train(_cfg(gpu_run, tmp_path, "", "ce"))
    cpu = Config.from_dict(gpu_run).override([f"train.out={tmp_path}", "train.epochs=2",
                                             "train.resume=true", "train.device=cpu"])
    result = train(cpu)
    assert [r["epoch"] for r in result.history] == [1, 2]
    ckpt = load_checkpoint(tmp_path / "last.pth")
    assert ckpt.epoch == 2


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_process_nccl_run(tmp_path, gpu_run):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "resdist", "train", "--data", "synthetic", "--model", "plain20",
           "--epochs", "1", "--batch-size", "16", "--out", str(out), "--no-progress",
           "--device", "cuda", "--sync-bn", "--amp", "auto",
           "--set", "data.synthetic_size=16", "--set", "train.tensorboard=false"]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
