import yaml

from resdist import demo
from resdist.cli import main


def test_demo_trains_teacher_plain_and_jointrd_and_prints_table(tmp_path, capsys, tiny_run):
    tiny_run["train"]["epochs"] = 1
    settings = tmp_path / "tiny.yaml"
    settings.write_text(yaml.safe_dump(tiny_run))
    assert main(["demo", "--config", str(settings), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "summary.md").read_text()
    assert "| resnet20 (teacher) | ce |" in table and "| plain20 | jointrd |" in table
    assert table.strip() in out
    assert (tmp_path / "resnet20-ce" / "last.pth").exists()


def test_demo_reads_the_packaged_demo_preset():
    from resdist.presets import load_preset

    assert demo.demo_config() == load_preset("demo")
    assert demo.demo_config(overrides=["train.epochs=1"]).train.epochs == 1


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
