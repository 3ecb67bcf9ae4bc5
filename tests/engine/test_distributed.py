"""DDP on CPU (gloo): two processes on one machine, checked against one process.

The two-process runs are launched as torchrun would launch them (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``); this file is also the worker script.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resdist.config import Config, ConfigError
from resdist.engine import load_checkpoint
from resdist.engine.distributed import (
    DistInfo,
    SyncBatchNorm2d,
    convert_sync_batchnorm,
    cuda_index,
)
from resdist.engine.trainer import check_distributed_options, train

WORLD = 2
PER_RANK_BATCH = 16
# fp32, 4 SGD steps: DDP + SyncBatchNorm over 2 x 16 images against one process over the same
# 32 images differ only in the order of float reductions (observed <= 1e-7). The student is a
# Dirac plain net: a 4-channel plain net without Dirac init amplifies float noise so much that
# the same one-process run with 1 vs 2 threads already differs by 1e-1 after 4 steps.
ATOL, RTOL = 1e-5, 1e-4
# printed by a worker after its last collective, just before it destroys its process group
WORKER_DONE = "resdist-test-worker-done"


def _spec(out: Path, **sets) -> dict:
    cfg = Config.from_dict({
        "data": {"name": "synthetic", "synthetic_samples": 96, "synthetic_size": 8,
                 "synthetic_channels": 1, "synthetic_classes": 4, "batch_size": PER_RANK_BATCH,
                 "limit_train": 64, "limit_test": 23, "eval_batch_size": 8, "augment": False},
        "model": {"name": "plain20", "width_mult": 0.25, "dirac": True},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 2, "out": str(out), "progress": False, "tensorboard": False,
                  "device": "cpu"},
    })
    return cfg.override([f"{k}={v}" for k, v in sets.items()]).to_dict()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


def _spawn(args: list[str], timeout: float = 240) -> None:
    """Run ``python *args`` in WORLD processes as torchrun would start them; all must succeed."""
    port = str(_free_port())
    procs = [
        subprocess.Popen(
            [sys.executable, *args],
            env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(WORLD),
                     MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for r in range(WORLD)
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    for r, (p, log) in enumerate(zip(procs, logs)):
        if _aborted_in_teardown(p.returncode, log):
            continue
        assert p.returncode == 0, f"rank {r} failed:\n{log[-4000:]}"


def _aborted_in_teardown(returncode: int, log: str) -> bool:
    """A rank that finished its work (it printed WORKER_DONE after its last collective) and
    was then aborted by gloo while tearing the group down ("terminate called without an active
    exception", SIGABRT). Seen once in about a dozen runs of these tests on a loaded 2-core
    machine (torch 2.14.1), never on demand; gloo's SIGABRT at teardown is discussed upstream
    (pytorch/pytorch#179291). Each test checks the work's results itself, so such a rank counts
    as finished; any other failure, or an abort before the work was done, still fails."""
    return (returncode == -signal.SIGABRT and WORKER_DONE in log
            and "terminate called without an active exception" in log)


def _launch(specs: list[dict], timeout: float = 240) -> None:
    """Run ``train(spec)`` for each spec in order, in WORLD processes (one gloo group)."""
    _spawn([__file__, json.dumps(specs)], timeout)


def _float_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if v.is_floating_point()}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("teacher")
    train(Config.from_dict(_spec(out, **{"model.name": "resnet20", "model.dirac": False,
                                         "train.epochs": 1})))
    return str(out / "last.pth")


def _assert_states_close(a: dict, b: dict, what: str) -> None:
    a, b = _float_state(a), _float_state(b)
    assert a.keys() == b.keys(), what
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=ATOL, rtol=RTOL, msg=f"{what}: {k}")


def test_ddp_sync_bn_matches_single_process_global_batch(tmp_path, teacher):
    # one launch of two ranks: CE and JointRD with sync_bn, and a CE run stopped after one
    # epoch and resumed (all ranks read rank 0's last.pth)
    cases = {"ce": {}, "jointrd": {"distill.method": "jointrd", "teacher.checkpoint": teacher}}
    specs = [_spec(tmp_path / "ddp" / name, **sets, **{"train.sync_bn": True})
             for name, sets in cases.items()]
    specs.append(_spec(tmp_path / "resumed", **{"train.sync_bn": True, "train.epochs": 1}))
    specs.append(_spec(tmp_path / "resumed", **{"train.sync_bn": True, "train.resume": True}))
    _launch(specs)
    for name, sets in cases.items():
        # the one process sees the same 32 images per step: the ranks take strided slices of
        # one shared permutation, so their union is the one process's batch
        train(Config.from_dict(_spec(tmp_path / "single" / name, **sets,
                                     **{"data.batch_size": WORLD * PER_RANK_BATCH})))
        ddp = load_checkpoint(tmp_path / "ddp" / name / "last.pth")
        one = load_checkpoint(tmp_path / "single" / name / "last.pth")
        assert ddp.epoch == one.epoch == 2
        # student weights and running statistics, and the objective's own parts (connectors)
        _assert_states_close(ddp.state_dict, one.state_dict, f"{name} model")
        _assert_states_close(ddp.objective, one.objective, f"{name} objective")
        # metrics: training terms averaged over ranks, test counts summed over disjoint shards
        m_ddp, m_one = ddp.metrics, one.metrics
        assert m_ddp["test_samples"] == m_one["test_samples"] == 23
        assert m_ddp["test_top1"] == pytest.approx(m_one["test_top1"]), name
        for k in ("train_loss", "test_loss"):
            assert m_ddp[k] == pytest.approx(m_one[k], rel=1e-4, abs=1e-5), (name, k)
    assert any(k.startswith("connectors.") for k in ddp.objective)

    # resumed across ranks == uninterrupted (constant LR, no augmentation)
    resumed = load_checkpoint(tmp_path / "resumed" / "last.pth")
    assert resumed.epoch == 2
    _assert_states_close(resumed.state_dict, load_checkpoint(tmp_path / "ddp/ce/last.pth").state_dict,
                         "resumed model")
    rows = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_ddp_with_augmentation_matches_single_process_on_a_resnet(tmp_path):
    # a real thin ResNet-20 with random crop + flip on: each sample's augmentation comes from
    # (seed, epoch, sample index), so the two ranks' union is the one process's batch, exactly
    sets = {"model.name": "resnet20", "model.dirac": False, "data.augment": True,
            "data.crop_padding": 1, "data.synthetic_channels": 3, "train.sync_bn": True}
    _launch([_spec(tmp_path / "ddp", **sets)])
    train(Config.from_dict(_spec(tmp_path / "one", **sets,
                                 **{"data.batch_size": WORLD * PER_RANK_BATCH})))
    ddp = load_checkpoint(tmp_path / "ddp" / "last.pth")
    one = load_checkpoint(tmp_path / "one" / "last.pth")
    assert ddp.epoch == one.epoch == 2  # 4 SGD steps
    worst = max((ddp.state_dict[k] - one.state_dict[k]).abs().max().item()
                for k in _float_state(one.state_dict))
    print(f"max |DDP - single| over parameters and BN statistics: {worst:.1e}")
    _assert_states_close(ddp.state_dict, one.state_dict, "resnet20 with augmentation")


def test_ddp_runs_every_method(tmp_path, teacher):
    # DDP raises on the second step if a trainable parameter got no gradient; reaching the
    # checkpoint means every method's trainable parameters (connectors included) are used
    methods = {
        "kd": {"distill.method": "kd", "teacher.checkpoint": teacher},
        "feature-kd": {"distill.method": "feature-kd", "teacher.checkpoint": teacher},
        "jointrd-nofeat": {"distill.method": "jointrd", "teacher.checkpoint": teacher,
                           "distill.feature_weight": 0},
        "jointrd-cotrain": {"distill.method": "jointrd", "teacher.train": True},
    }
    _launch([_spec(tmp_path / name, **sets, **{"train.epochs": 1})
             for name, sets in methods.items()])
    for name in methods:
        ckpt = load_checkpoint(tmp_path / name / "last.pth")
        assert ckpt.epoch == 1, name
        for k in ("train_loss", "test_loss"):
            assert torch.isfinite(torch.tensor(ckpt.metrics[k])), (name, k)
    assert any(k.startswith("connectors.")
               for k in load_checkpoint(tmp_path / "jointrd-cotrain/last.pth").objective)


def test_torchrun_cli_writes_one_run_dir_from_rank_zero(tmp_path):
    out = tmp_path / "runs" / "r"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={WORLD}", "-m", "resdist", "train", "--data", "synthetic",
           "--model", "plain20", "--epochs", "2", "--batch-size", "8", "--limit-train", "32",
           "--limit-test", "16", "--out", str(out), "--device", "cpu", "--no-progress",
           "--set", "model.width_mult=0.25", "--set", "data.synthetic_size=8",
           "--set", "data.synthetic_channels=1", "--set", "train.tensorboard=false"]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert [d.name for d in (tmp_path / "runs").iterdir()] == ["r"]
    names = sorted(f.name for f in out.iterdir())
    assert names == ["best.pth", "config.yaml", "last.pth", "metrics.csv", "metrics.jsonl",
                     "train.log"]
    log = (out / "train.log").read_text()  # rank 0's console only
    assert log.count("done: ") == 1 and log.count("epoch 2/2") == 1
    rows = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["test_samples"] == 16 for r in rows)
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3
    assert load_checkpoint(out / "last.pth").epoch == 2


_FIRST_WORKER = """
import os, sys, pathlib
import torch.distributed as dist
from resdist.engine.distributed import local_main_first
dist.init_process_group("gloo")
rank, marker = dist.get_rank(), pathlib.Path(sys.argv[1])
try:
    with local_main_first():
        seen = marker.read_text() if marker.exists() else "nothing"
        pathlib.Path(sys.argv[1] + f".rank{rank}").write_text(seen)
        if rank == 0:
            marker.write_text("downloaded by rank 0")
            if sys.argv[2] == "fail":
                raise RuntimeError("download failed")
except RuntimeError:
    pass
print("resdist-test-worker-done", flush=True)
dist.destroy_process_group()
"""


@pytest.mark.parametrize("mode", ["ok", "fail"])
def test_local_main_first_lets_local_rank_zero_fetch_before_the_others(tmp_path, mode):
    marker = tmp_path / "marker"
    _spawn(["-c", _FIRST_WORKER, str(marker), mode], timeout=120)
    # rank 0 found nothing; rank 1 entered only after rank 0's body (even one that raised)
    assert (tmp_path / "marker.rank0").read_text() == "nothing"
    assert (tmp_path / "marker.rank1").read_text() == "downloaded by rank 0"


_NAN_WORKER = """
import sys, pathlib
import torch
import torch.distributed as dist
from resdist.engine.distributed import any_rank_true
from resdist.engine.trainer import accumulation_step
dist.init_process_group("gloo")
rank = dist.get_rank()
net = torch.nn.Linear(3, 1)
scale = float("nan") if rank == 1 else 1.0
objective = lambda x, y: {"loss": net(x).pow(2).mean() * scale}
opt = torch.optim.SGD(net.parameters(), lr=0.1)
scaler = torch.amp.GradScaler("cpu", enabled=False)
out = accumulation_step(objective, opt, scaler, [(torch.ones(2, 3), torch.zeros(2))])
stop = any_rank_true(~torch.isfinite(out[0]["loss"].detach()))  # the trainer's check
pathlib.Path(sys.argv[1] + f".rank{rank}").write_text(str(stop))
dist.barrier()  # leave together: a gloo rank torn down mid-exchange can abort at exit
print("resdist-test-worker-done", flush=True)
dist.destroy_process_group()
"""


def test_non_finite_loss_on_one_rank_stops_every_rank(tmp_path):
    _spawn(["-c", _NAN_WORKER, str(tmp_path / "msg")], timeout=120)
    assert (tmp_path / "msg.rank0").read_text() == "True"  # rank 0's loss was finite
    assert (tmp_path / "msg.rank1").read_text() == "True"


_BUFFERS_WORKER = """
import json, sys, pathlib
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from resdist.config import Config
from resdist.engine import trainer
seen = []
init = DistributedDataParallel.__init__
def spy(self, *a, **k):
    seen.append(k.get("broadcast_buffers", True))
    init(self, *a, **k)
DistributedDataParallel.__init__ = spy
torch.set_num_threads(1)
dist.init_process_group("gloo")
rank = dist.get_rank()
captured = {}
fit = trainer.Trainer.fit
def keep(self):
    result = fit(self)
    captured.update({k: v.detach().clone() for k, v in self.model.named_buffers()})
    captured.update({k: v.detach().clone() for k, v in self.model.named_parameters()})
    return result
trainer.Trainer.fit = keep
trainer.train(Config.from_dict(json.loads(sys.argv[1])))
torch.save({"broadcast_buffers": seen, "state": captured}, sys.argv[2] + f".rank{rank}")
dist.barrier()
print("resdist-test-worker-done", flush=True)
dist.destroy_process_group()
"""


def test_ddp_sends_no_buffers_per_step_and_ranks_end_with_equal_buffers(tmp_path):
    # without sync-BN each rank's BatchNorm statistics follow its own batches during the epoch;
    # they are made equal (rank 0's) before each evaluation, and constant buffers (Dirac identity
    # kernels) never travel
    spec = _spec(tmp_path / "run", **{"train.epochs": 1})
    _spawn(["-c", _BUFFERS_WORKER, json.dumps(spec), str(tmp_path / "state")], timeout=120)
    ranks = [torch.load(tmp_path / f"state.rank{r}", weights_only=True) for r in range(WORLD)]
    assert all(r["broadcast_buffers"] == [False] for r in ranks)
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert any(k.endswith("running_mean") for k in a) and any(k.endswith("identity") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_compile_with_sync_bn_under_ddp_is_refused_in_one_line():
    cfg = Config().override(["train.compile=true", "train.sync_bn=true"])
    check_distributed_options(cfg, DistInfo(rank=0, world_size=1))  # single process: fine
    with pytest.raises(ConfigError, match="train.compile with train.sync_bn under DDP"):
        check_distributed_options(cfg, DistInfo(rank=0, world_size=2))


def test_each_process_uses_its_local_gpu_or_the_only_one_it_sees():
    assert [cuda_index(r, 4) for r in range(4)] == [0, 1, 2, 3]
    assert cuda_index(3, 1) == 0  # e.g. SLURM --gpus-per-task=1: every process sees one GPU
    with pytest.raises(ConfigError, match="LOCAL_RANK 5 but this process sees 4 CUDA devices"):
        cuda_index(5, 4)


def test_convert_sync_batchnorm_keeps_tensors_and_skips_frozen_layers():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4),
                              torch.nn.Sequential(torch.nn.BatchNorm2d(4)))
    frozen = net[2][0]
    frozen.requires_grad_(False)
    weight, mean = net[1].weight, net[1].running_mean
    keys = list(net.state_dict())
    convert_sync_batchnorm(net)
    assert isinstance(net[1], SyncBatchNorm2d) and isinstance(net[1], torch.nn.BatchNorm2d)
    assert net[1].weight is weight and net[1].running_mean is mean
    assert net[2][0] is frozen
    assert list(net.state_dict()) == keys
    # single process: the ordinary BatchNorm path
    x = torch.randn(4, 1, 6, 6)
    ref = torch.nn.functional.batch_norm(net[0](x), None, None, weight, net[1].bias, True)
    torch.testing.assert_close(net[1](net[0](x)), ref)


if __name__ == "__main__":  # a worker: rank and world from the environment, as under torchrun
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    for spec in json.loads(sys.argv[1]):
        train(Config.from_dict(spec))
    print(WORKER_DONE, flush=True)
    dist.destroy_process_group()
