from resdist import demo
from resdist.cli import main


def test_demo_trains_teacher_plain_and_jointrd_and_prints_table(tmp_path, monkeypatch, capsys, tiny_run):
    tiny_run["train"]["epochs"] = 1
    monkeypatch.setattr(demo, "DEMO_DEFAULTS", tiny_run)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "summary.md").read_text()
    assert "| resnet20 (teacher) | ce |" in table and "| plain20 | jointrd |" in table
    assert table.strip() in out
    assert (tmp_path / "resnet20-ce" / "last.pth").exists()
    # a second demo into the same folder keeps the finished runs (no refusal, no retraining)
    assert main(["demo", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "summary.md").read_text() == table
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]


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
