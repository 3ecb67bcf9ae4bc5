"""docs/training.md's "Train a timm teacher here" recipe runs as written, shrunk to tiny data:
timm's architecture trained here, then distilled into its plain student."""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import pytest

from resdist.cli import main
from resdist.engine import load_checkpoint

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_writers import write_imagefolder  # noqa: E402

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "training.md"
#: appended to each command (argparse and --set keep the last value): tiny data, no download
SHRINK = ["--epochs", "1", "--batch-size", "4", "--no-progress", "--set", "model.weights=",
          "--set", "data.image_size=32", "--set", "data.eval_batch_size=4", "--set",
          "data.num_workers=0", "--set", "train.tensorboard=false", "--set", "train.device=cpu"]


def recipe() -> list[list[str]]:
    text = GUIDE.read_text()
    section = text.split("### Train a timm teacher here", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.S).group(1)
    return [shlex.split(line) for line in re.sub(r"\\\n\s*", " ", block).splitlines() if line]


@pytest.mark.slow  # two ResNet-18-size networks, trained for a step
def test_timm_teacher_recipe_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("timm")
    monkeypatch.chdir(tmp_path)
    write_imagefolder(tmp_path / "mydata", num_classes=3, n_train=4, n_val=2, size=32)
    commands = recipe()
    assert [c[:2] for c in commands] == [["resdist", "train"]] * 2
    for argv in commands:
        assert main(argv[1:] + SHRINK) == 0, capsys.readouterr().err
    teacher = load_checkpoint(tmp_path / "runs" / "teacher" / "best.pth")
    student = load_checkpoint(tmp_path / "runs" / "plain18" / "last.pth")
    assert teacher.model_name == "timm:resnet18" and student.model_name == "plain18"
    assert student.num_classes == teacher.num_classes == 3
    assert "teacher: " in (tmp_path / "runs" / "plain18" / "train.log").read_text()
