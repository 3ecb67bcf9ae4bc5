import json

import pytest
import torch

from resdist.config import Config
from resdist.engine import load_checkpoint, model_from_checkpoint
from resdist.engine.optim import lr_factor
from resdist.engine.trainer import train


def _cfg(tmp_path, **sets):
    cfg = Config.from_dict({
        "data": {"name": "synthetic", "synthetic_samples": 256, "synthetic_size": 16,
                 "synthetic_channels": 1, "synthetic_classes": 4, "batch_size": 32},
        "model": {"name": "plain20", "width_mult": 0.5},
        "optim": {"lr": 0.05, "schedule": "cosine"},
        "train": {"epochs": 2, "out": str(tmp_path / "run"), "progress": False,
                  "tensorboard": False},
    })
    return cfg.override([f"{k}={v}" for k, v in sets.items()])


def test_train_writes_run_dir_and_resume_continues(tmp_path):
    cfg = _cfg(tmp_path, **{"train.epochs": 1})
    r1 = train(cfg)
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "last.pth").exists()
    assert (run / "best.pth").exists() and (run / "metrics.csv").exists()
    saved = Config.from_yaml(run / "config.yaml")
    assert saved.to_dict() == cfg.to_dict()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert {"train_loss", "test_top1", "test_top5", "lr", "images_per_s"} <= set(rows[0])
    ckpt = load_checkpoint(run / "last.pth")
    assert ckpt.epoch == 1 and ckpt.model_name == "plain20"
    assert None not in (ckpt.optimizer, ckpt.scheduler, ckpt.rng, ckpt.config)

    # resume: continue to 3 epochs from the checkpoint
    cfg2 = _cfg(tmp_path, **{"train.epochs": 3, "train.resume": True})
    r2 = train(cfg2)
    assert [r["epoch"] for r in r2.history] == [1, 2, 3]
    assert r2.history[0] == r1.history[0]
    assert load_checkpoint(run / "last.pth").epoch == 3
    model = model_from_checkpoint(run / "last.pth")
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 4)


def test_resume_equals_uninterrupted_run(tmp_path):
    # with a constant LR, a 1-epoch run is exactly the first epoch of a 2-epoch run
    const = {"optim.schedule": "constant"}
    full = train(_cfg(tmp_path / "a", **{"train.epochs": 2}, **const))
    train(_cfg(tmp_path / "b", **{"train.epochs": 1}, **const))
    resumed = train(_cfg(tmp_path / "b", **{"train.epochs": 2, "train.resume": True}, **const))
    a = load_checkpoint(tmp_path / "a" / "run" / "last.pth").state_dict
    b = load_checkpoint(tmp_path / "b" / "run" / "last.pth").state_dict
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)
    assert resumed.final["test_top1"] == pytest.approx(full.final["test_top1"])


def test_jointrd_from_teacher_checkpoint_and_val_split(tmp_path):
    train(_cfg(tmp_path / "t", **{"model.name": "resnet20", "train.epochs": 1}))
    cfg = _cfg(tmp_path / "s", **{
        "distill.method": "jointrd", "teacher.checkpoint": str(tmp_path / "t/run/last.pth"),
        "model.dirac": True, "data.val_split": 0.25, "train.epochs": 1})
    r = train(cfg)
    row = r.final
    assert {"train_ce_student", "train_ce_paths", "train_feat_student", "val_top1"} <= set(row)
    ckpt = load_checkpoint(tmp_path / "s/run/last.pth")
    # only the student is the checkpoint's model; connectors live in the objective state
    assert not any(k.startswith(("teacher.", "connectors.")) for k in ckpt.state_dict)
    assert any(k.startswith("connectors.") for k in ckpt.objective)
    # the student is saved once (as model) and the frozen teacher not at all
    assert not any(k.startswith(("student.", "teacher")) for k in ckpt.objective)
    cfg.override(["train.epochs=2", "train.resume=true"])
    r2 = train(cfg)
    assert [row["epoch"] for row in r2.history] == [1, 2]


def test_lr_schedules():
    from resdist.config import OptimConfig

    f = lr_factor(OptimConfig(schedule="multistep", milestones=[0.5, 0.75]), 200)
    assert f(0) == 1 and f(99.9) == 1 and f(100) == pytest.approx(0.1)
    assert f(150) == pytest.approx(0.01)
    f = lr_factor(OptimConfig(schedule="step", step_size=30), 120)
    assert f(29) == 1 and f(30) == pytest.approx(0.1) and f(95) == pytest.approx(1e-3)
    f = lr_factor(OptimConfig(schedule="cosine"), 10)
    assert f(0) == 1 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(0)
    f = lr_factor(OptimConfig(schedule="constant", warmup_epochs=2), 10)
    assert f(1) == pytest.approx(0.5) and f(3) == 1


def test_no_save_best_writes_last_only_and_few_classes_hide_top5(tmp_path, tiny_run, capsys):
    cfg = Config.from_dict(tiny_run).override([f"train.out={tmp_path / 'r'}",
                                               "train.save_best=false", "train.epochs=1"])
    train(cfg)
    files = {p.name for p in (tmp_path / "r").iterdir()}
    assert "last.pth" in files and "best.pth" not in files
    out = capsys.readouterr()
    line = [ln for ln in (out.out + out.err).splitlines() if ln.startswith("epoch 1/1")][0]
    assert "test" in line and "top-5" not in line  # 4 classes


def test_dataloader_workers_default_to_the_cores_available(monkeypatch):
    from resdist.data import build as data_build

    monkeypatch.setattr(data_build, "available_cores", lambda: 2)
    assert data_build.default_workers() == 2
    monkeypatch.setattr(data_build, "available_cores", lambda: 64)
    assert data_build.default_workers() == 4
    assert Config().data.num_workers is None


def test_a_trained_teacher_is_scored_before_the_student_learns_from_it(tmp_path, tiny_run,
                                                                       capsys):
    from resdist.engine import evaluate_checkpoint

    teacher = Config.from_dict(tiny_run).override([f"train.out={tmp_path / 't'}",
                                                   "model.name=resnet20", "train.epochs=1"])
    train(teacher)
    student = Config.from_dict(tiny_run).override([
        f"train.out={tmp_path / 's'}", "train.epochs=1", "distill.method=kd",
        f"teacher.checkpoint={tmp_path / 't'}"])
    capsys.readouterr()
    train(student)
    said = capsys.readouterr()
    record = json.loads((tmp_path / "s" / "teacher.json").read_text())
    expected = evaluate_checkpoint(tmp_path / "t", device="cpu")
    assert record["split"] == "test" and record["top1"] == pytest.approx(expected.top1)
    assert f"test top-1 {expected.top1:.2f}%" in said.out + said.err


def test_repvgg_student_trains_with_every_method(tmp_path):
    from resdist.models import RepVGGConv2d

    train(_cfg(tmp_path / "t", **{"model.name": "resnet20", "train.epochs": 1,
                                  "data.synthetic_samples": 128}))
    teacher = str(tmp_path / "t/run/last.pth")
    for method in ("ce", "kd", "feature-kd", "jointrd"):
        r = train(_cfg(tmp_path / method, **{
            "distill.method": method, "teacher.checkpoint": teacher, "train.epochs": 1,
            "model.student_param": "repvgg", "data.synthetic_samples": 128}))
        assert r.history[-1]["epoch"] == 1 and r.history[-1]["train_loss"] > 0
        ckpt = load_checkpoint(tmp_path / method / "run/last.pth")
        assert ckpt.model_kwargs.get("repvgg") is True
        model = model_from_checkpoint(ckpt)
        assert sum(isinstance(m, RepVGGConv2d) for m in model.modules()) == 19
