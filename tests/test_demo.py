from resdist import demo
from resdist.cli import main


def test_demo_trains_teacher_plain_and_jointrd_and_prints_table(tmp_path, monkeypatch, capsys):
    tiny = {
        "data": {"name": "synthetic", "synthetic_samples": 128, "synthetic_size": 16,
                 "synthetic_channels": 1, "synthetic_classes": 4, "batch_size": 32},
        "model": {"name": "plain20", "width_mult": 0.25},
        "optim": {"lr": 0.05, "schedule": "onecycle"},
        "train": {"epochs": 1, "progress": False, "tensorboard": False},
    }
    monkeypatch.setattr(demo, "DEMO_DEFAULTS", tiny)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "summary.md").read_text()
    assert "| resnet20 (teacher) | ce |" in table and "| plain20 | jointrd |" in table
    assert table.strip() in out
    assert (tmp_path / "resnet20-ce" / "last.pth").exists()


def test_demo_defaults_match_the_preset():
    from pathlib import Path

    from resdist.config import Config

    preset = Path(__file__).parents[1] / "configs" / "demo.yaml"
    assert Config.from_yaml(preset) == Config.from_dict(demo.DEMO_DEFAULTS)


def test_ensure_fashion_mnist_installs_only_when_it_can(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(demo, "DEBIAN_FASHION_MNIST", tmp_path / "missing")
    monkeypatch.setattr(demo.subprocess, "run",
                        lambda cmd, check: calls.append(cmd) or type("R", (), {"returncode": 0}))
    monkeypatch.setattr(demo.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(demo.os, "geteuid", lambda: 1000)
    demo.ensure_fashion_mnist(None)
    assert calls == []  # not root: leave it to the loader's error message
    monkeypatch.setattr(demo.os, "geteuid", lambda: 0)
    demo.ensure_fashion_mnist("/some/dir")
    assert calls == []  # an explicit data dir is never "fixed" by apt
    demo.ensure_fashion_mnist(None)
    assert calls[-1][-1] == "dataset-fashion-mnist"
