"""A run directory holds one run: refusal, lock, --overwrite, resume checks, and metrics that
match the checkpoints after a crash at any moment."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resdist.config import Config
from resdist.engine import load_checkpoint
from resdist.engine import trainer as trainer_module
from resdist.engine.metrics import MetricsLogger
from resdist.engine.rundir import RunDirError, RunLock
from resdist.engine.trainer import train


def _cfg(out: Path, **sets) -> Config:
    cfg = Config.from_dict({
        "data": {"name": "synthetic", "synthetic_samples": 96, "synthetic_size": 8,
                 "synthetic_channels": 1, "synthetic_classes": 4, "batch_size": 32,
                 "limit_test": 16},
        "model": {"name": "plain20", "width_mult": 0.25},
        "optim": {"lr": 0.05, "schedule": "constant"},
        "train": {"epochs": 2, "out": str(out), "progress": False, "tensorboard": False,
                  "device": "cpu"},
    })
    return cfg.override([f"{k}={v}" for k, v in sets.items()])


def _epochs(run: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _csv_epochs(run: Path) -> list[int]:
    lines = (run / "metrics.csv").read_text().strip().splitlines()
    return [int(line.split(",")[0]) for line in lines[1:]]


def test_training_into_a_run_dir_that_holds_a_run_is_refused(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, **{"train.epochs": 1}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunDirError, match="already holds a run.*--resume.*new --out.*--overwrite"):
        train(_cfg(run, **{"train.epochs": 1}))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_overwrite_moves_the_old_run_aside(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, **{"train.epochs": 1}))
    old_ckpt = (run / "last.pth").read_bytes()
    train(_cfg(run, **{"train.epochs": 1, "train.overwrite": True, "optim.lr": 0.01}))
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert (aside / "last.pth").read_bytes() == old_ckpt
    assert Config.from_yaml(run / "config.yaml").optim.lr == 0.01
    assert _epochs(run) == [1] and _epochs(aside) == [1]


@pytest.mark.parametrize("key,value", [("model.name", "plain32"), ("distill.method", "kd"),
                                       ("data.name", "fashion-mnist"), ("model.dirac", True)])
def test_resume_with_another_model_method_or_data_is_refused_before_touching_anything(
        tmp_path, key, value):
    run = tmp_path / "run"
    train(_cfg(run, **{"train.epochs": 1}))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunDirError, match=f"--resume: .*{key}="):
        train(_cfg(run, **{"train.resume": True, key: value}))
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


def test_a_second_training_into_a_locked_run_dir_refuses(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from resdist.engine.rundir import RunLock; RunLock(Path(sys.argv[1])).acquire(); "
         "print('locked', flush=True); time.sleep(120)", str(run)],
        stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirError, match=f"in use by another training \\(pid {holder.pid}"):
            train(_cfg(run, **{"train.epochs": 1}))
        assert not (run / "config.yaml").exists()
    finally:
        holder.kill()  # kill -9: the kernel drops the lock, the file stays behind
        holder.wait()
    assert (run / ".lock").exists()
    train(_cfg(run, **{"train.epochs": 1}))  # a stale lock of a dead process is taken over
    assert not (run / ".lock").exists() and _epochs(run) == [1]


def test_lock_is_released_when_training_fails(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(_cfg(run))
    assert not run.exists()  # a new run that failed before its first checkpoint leaves nothing
    run.mkdir()
    with RunLock(run):  # free again
        pass


def test_a_failed_fresh_run_leaves_nothing_but_a_failed_resume_keeps_the_run(tmp_path,
                                                                           monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")  # not a run file: never touched
    real_fit = trainer_module.Trainer.fit
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(_cfg(run))
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    monkeypatch.setattr(trainer_module.Trainer, "fit", real_fit)
    train(_cfg(run))  # no --overwrite needed
    monkeypatch.setattr(trainer_module.Trainer, "fit", lambda self: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(_cfg(run, **{"train.resume": True, "train.epochs": 3}))
    assert {"config.yaml", "last.pth", "metrics.jsonl"} <= {p.name for p in run.iterdir()}


@pytest.mark.parametrize("moment", ["before_row", "during_checkpoint"])
def test_crash_then_resume_leaves_one_metrics_row_per_epoch(tmp_path, monkeypatch, moment):
    run = tmp_path / "run"
    real_log, real_save = MetricsLogger.log, trainer_module.save_checkpoint

    def crash_log(self, row):
        if row["epoch"] == 2:
            raise KeyboardInterrupt  # killed after epoch 2's checkpoint, before its row
        real_log(self, row)

    def crash_save(state, path):
        if state.epoch == 2:
            Path(path).with_name(".last.pth.abc123.tmp").write_bytes(b"half a checkpoint")
            raise KeyboardInterrupt  # killed mid-write: a temporary file is left behind
        return real_save(state, path)

    if moment == "before_row":
        monkeypatch.setattr(MetricsLogger, "log", crash_log)
    else:
        monkeypatch.setattr(trainer_module, "save_checkpoint", crash_save)
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(run, **{"train.epochs": 3}))
    monkeypatch.undo()
    saved = load_checkpoint(run / "last.pth").epoch
    assert saved == (2 if moment == "before_row" else 1)
    assert _epochs(run) == [1]
    result = train(_cfg(run, **{"train.epochs": 3, "train.resume": True}))
    assert _epochs(run) == _csv_epochs(run) == [1, 2, 3]
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert not list(run.glob(".*.tmp"))


def test_resume_tolerates_a_torn_last_metrics_line(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, **{"train.epochs": 1}))
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 2, "train_lo')  # the process died mid-line
    train(_cfg(run, **{"train.epochs": 2, "train.resume": True}))
    assert _epochs(run) == [1, 2]


def test_non_finite_loss_names_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    calls = {"n": 0}
    real = trainer_module.accumulation_step

    def poisoned(*args, **kw):
        outs = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2, step 1 (3 steps per epoch)
            outs[-1]["loss"] = torch.tensor(float("nan"))
        return outs

    monkeypatch.setattr(trainer_module, "accumulation_step", poisoned)
    with pytest.raises(trainer_module.TrainingError) as info:
        # a check after every step names the step exactly (by default, the range since the
        # last check: train.check_every)
        train(_cfg(run, **{"train.epochs": 3, "train.check_every": 1}))
    msg = str(info.value)
    assert "loss became non-finite at epoch 2, step 1" in msg
    assert f"last good checkpoint {run / 'last.pth'} (epoch 1) is kept" in msg
    assert "lower the learning rate" in msg and "\n" not in msg
    assert isinstance(info.value, FloatingPointError)
    assert load_checkpoint(run / "last.pth").epoch == 1 and _epochs(run) == [1]


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, capsys):
    assert isinstance(trainer_module.cpu_has_native_bf16(), bool)
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: False)
    train(_cfg(tmp_path / "run", **{"train.epochs": 1, "train.amp": "bf16",
                                    "data.limit_train": 32}))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "native bf16" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning:")


def test_lock_file_names_its_holder(tmp_path):
    with RunLock(tmp_path):
        assert (tmp_path / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}"
        with pytest.raises(RunDirError, match=f"pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
    assert not (tmp_path / ".lock").exists()
