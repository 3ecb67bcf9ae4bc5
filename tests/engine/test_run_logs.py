"""What a run folder tells a user besides checkpoints: per-step loss/LR, train.log, where the
data lives, a resumed run re-planned for more epochs, and a lighter best.pth."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from resdist.config import Config
from resdist.engine import load_checkpoint
from resdist.engine.optim import lr_factor
from resdist.engine.trainer import train

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_writers import write_imagefolder  # noqa: E402


def _cfg(out: Path, **sets) -> Config:
    cfg = Config.from_dict({
        "data": {"name": "synthetic", "synthetic_samples": 128, "synthetic_size": 16,
                 "synthetic_channels": 1, "synthetic_classes": 4, "batch_size": 32},
        "model": {"name": "plain20", "width_mult": 0.25},
        "optim": {"lr": 0.1, "schedule": "onecycle"},
        "train": {"epochs": 2, "out": str(out), "progress": False, "tensorboard": False,
                  "log_every": 1},
    })
    return cfg.override([f"{k}={v}" for k, v in sets.items()])


def _steps(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


def test_steps_and_console_are_logged_in_the_run_folder(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    train(_cfg(run, **{"train.log_every": 2, "train.tensorboard": True}))
    rows = _steps(run)  # 4 steps per epoch (128 / 32), one row every 2
    assert [(r["epoch"], r["step"]) for r in rows] == [(1, 2), (1, 4), (2, 6), (2, 8)]
    factor = lr_factor(_cfg(run).optim, 2)
    for r in rows:  # the LR the step used: the schedule at the start of that step
        assert r["lr"] == pytest.approx(0.1 * factor((r["step"] - 1) / 4))
        assert r["loss"] > 0
    events = EventAccumulator(str(run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("step/loss")] == [2, 4, 6, 8]
    console = capsys.readouterr().out
    log = (run / "train.log").read_text()
    for line in console.splitlines():  # every console line is in the log
        assert line in log
    assert "epoch 2/2" in log and f"done: {run}" in log


def test_resume_with_more_epochs_replans_the_schedule(tmp_path, capsys):
    fresh = tmp_path / "fresh"
    train(_cfg(fresh))
    run = tmp_path / "extended"
    train(_cfg(run, **{"train.epochs": 1}))
    capsys.readouterr()
    train(_cfg(run, **{"train.epochs": 2, "train.resume": True}))
    out = capsys.readouterr().out
    assert "train.epochs 1 -> 2: the onecycle LR schedule re-planned over 2 epochs" in out
    assert "start anew with --overwrite" in out and out.count("re-planned") == 1
    # epoch 2 of the extended run steps at the LRs of epoch 2 of a 2-epoch run
    extended = [r["lr"] for r in _steps(run) if r["epoch"] == 2]
    planned = [r["lr"] for r in _steps(fresh) if r["epoch"] == 2]
    assert extended == pytest.approx(planned) and len(extended) == 4
    assert [r["epoch"] for r in _steps(run)] == [1] * 4 + [2] * 4
    assert "(--resume)" in (run / "train.log").read_text()


def test_best_weights_only_keeps_a_lighter_best(tmp_path):
    run = tmp_path / "run"
    train(_cfg(run, **{"train.epochs": 1, "train.best_weights_only": True}))
    best, last = load_checkpoint(run / "best.pth"), load_checkpoint(run / "last.pth")
    assert best.optimizer is None and best.rng is None and best.contract == last.contract
    assert last.optimizer is not None
    assert (run / "best.pth").stat().st_size < (run / "last.pth").stat().st_size


def test_relative_data_folder_is_recorded_absolute(tmp_path, monkeypatch):
    write_imagefolder(tmp_path / "mydata", num_classes=2, n_train=4, n_val=2, size=20)
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path / "run", **{"data.name": "imagefolder", "data.data_dir": "mydata",
                                    "data.batch_size": 4, "data.num_workers": 0,
                                    "train.epochs": 1})
    train(cfg)
    assert cfg.data.data_dir == "mydata"  # the caller's config is left as it was
    saved = Config.from_yaml(tmp_path / "run" / "config.yaml")
    assert saved.data.data_dir == str(tmp_path / "mydata")
    assert load_checkpoint(tmp_path / "run" / "last.pth").config["data"]["data_dir"] == \
        str(tmp_path / "mydata")
    # the 20 px images at the default 224 px input were named in the run's log
    assert "--set data.image_size=20" in (tmp_path / "run" / "train.log").read_text()
