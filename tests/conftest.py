import os

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # one intra-op thread per test process: with pytest-xdist workers sharing a few cores,
    # oversubscribed small-tensor ops run many times slower
    torch.set_num_threads(1)
    # ATEN_CPU_CAPABILITY=avx2 on an AVX-512 CPU makes ATen behave as on an AVX2-only machine,
    # but inductor still reads the CPU and writes AVX-512 kernels; that mix (which no real
    # machine has) turns the compiled bf16 step's loss non-finite. Vectorise inductor's kernels
    # at 256 bits too, as it does by itself on an AVX2-only CPU.
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        import torch._inductor.config as inductor_config

        inductor_config.cpp.simdlen = 256


@pytest.fixture
def tiny_run():
    """Settings for a whole training run in about a second: tiny synthetic data and network."""
    return {
        "data": {"name": "synthetic", "synthetic_samples": 128, "synthetic_size": 16,
                 "synthetic_channels": 1, "synthetic_classes": 4, "batch_size": 32},
        "model": {"name": "plain20", "width_mult": 0.25},
        "optim": {"lr": 0.05, "schedule": "onecycle"},
        "train": {"epochs": 2, "progress": False, "tensorboard": False},
    }
