import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from resdist.cli import main
from resdist.experiments import demo


def _models(table):
    """The (model, method) cells of the table's rows."""
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table.splitlines()
            if line.startswith("| ")]
    return {(r[0], r[1]) for r in rows[1:]}


def test_demo_trains_teacher_plain_and_jointrd_and_prints_table(tmp_path, capsys, tiny_run):
    tiny_run["train"]["epochs"] = 1
    settings = tmp_path / "tiny.yaml"
    settings.write_text(yaml.safe_dump(tiny_run))
    assert main(["demo", "--config", str(settings), "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    table = (tmp_path / "summary.md").read_text()
    assert {("resnet20 (teacher)", "ce"), ("plain20", "jointrd")} <= _models(table)
    assert f"Machine: {demo.machine_line()}; 0 min " in table and " s in all " in table
    assert table.strip() in out
    assert (tmp_path / "resnet20-ce" / "last.pth").exists()
    # a second demo into the same folder keeps the finished runs (no refusal, no retraining)
    assert main(["demo", "--config", str(settings), "--out", str(tmp_path)]) == 0
    def rows(text):  # the figures; the Machine line also holds the wall time
        return [line for line in text.splitlines() if not line.startswith("Machine:")]

    assert rows((tmp_path / "summary.md").read_text()) == rows(table)
    assert not [p for p in tmp_path.iterdir() if ".old-" in p.name]


def test_demo_reads_the_packaged_demo_preset():
    from resdist.presets import load_preset

    assert demo.demo_config() == load_preset("demo")
    assert demo.demo_config(overrides=["train.epochs=1"]).train.epochs == 1


def _make_fashion_mnist(tmp_path, fmnist_dir):
    """``make fashion-mnist`` with apt-get replaced by a script that logs its arguments."""
    log = tmp_path / "apt.log"
    fake = tmp_path / "apt-get"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    makefile = Path(__file__).parents[1] / "Makefile"
    subprocess.run(["make", "-s", "-f", str(makefile), "fashion-mnist",
                    f"FMNIST_DIR={fmnist_dir}", f"APT_GET={fake}"], check=True)
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_installs_fashion_mnist_only_when_missing_and_root(tmp_path):
    present = tmp_path / "present"
    present.mkdir()
    (present / "train-images-idx3-ubyte.gz").write_bytes(b"")
    assert _make_fashion_mnist(tmp_path, present) == []
    calls = _make_fashion_mnist(tmp_path, tmp_path / "missing")
    if os.geteuid() == 0:
        assert calls[-1].split()[-1] == "dataset-fashion-mnist"
    else:
        assert calls == []  # not root: leave it to the loader's error message


def test_demo_evaluates_the_packaged_teacher_and_trains_only_the_students(tmp_path, capsys):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from data_writers import write_fmnist

    from resdist.engine import load_checkpoint
    from resdist.weights import packaged_weights

    teacher = packaged_weights(demo.DEMO_TEACHER)
    ckpt = load_checkpoint(teacher)  # weights-only, like every checkpoint
    assert ckpt.model_name == "resnet32" and ckpt.config["data"]["name"] == "fashion-mnist"
    assert teacher.stat().st_size < 3_000_000
    write_fmnist(tmp_path / "fm", n_train=160, n_test=40)  # eval builds 128-image batches too
    out = tmp_path / "demo"
    assert main(["demo", "--data-dir", str(tmp_path / "fm"), "--out", str(out),
                 "--set", "data.batch_size=32", "--set", "data.limit_train=null"]) == 0
    printed = capsys.readouterr().out
    table = (out / "summary.md").read_text()
    assert _models(table) == {("resnet32 (teacher)", "pretrained"), ("plain32", "ce"),
                              ("plain32", "jointrd")}
    assert "Teacher: evaluated here, not trained: the packaged ResNet-32" in table
    assert "resnet32 on fashion-mnist test (40 images)" in printed
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["plain32-ce", "plain32-jointrd"]
    cfg = yaml.safe_load((out / "plain32-jointrd" / "config.yaml").read_text())
    assert cfg["teacher"]["checkpoint"] == str(teacher)
