"""``train --dry-run`` loads and checks the teacher, and each teacher mistake names its fix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from resdist.cli import main
from resdist.models import create_model

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_writers import write_checkpoint, write_imagefolder  # noqa: E402

SYNTH = ["--data", "synthetic", "--method", "jointrd", "--dry-run", "--set",
         "data.synthetic_classes=4", "--set", "data.synthetic_size=32"]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_dry_run_refuses_a_teacher_file_with_other_classes(tmp_path, capsys):
    write_imagefolder(tmp_path / "mydata", num_classes=3, n_train=1, n_val=1, size=24)
    torch.save(create_model("resnet18", num_classes=1000).state_dict(), tmp_path / "t.pth")
    line = _error(capsys, ["train", "--data", "imagefolder", "--data-dir",
                           str(tmp_path / "mydata"), "--model", "plain18", "--method", "jointrd",
                           "--teacher-weights", str(tmp_path / "t.pth"), "--dry-run"])
    assert "weights have 1000, model has 3" in line
    # the same file with the data's class count passes, and the output says it was checked
    torch.save(create_model("resnet18", num_classes=3).state_dict(), tmp_path / "t.pth")
    assert main(["train", "--data", "imagefolder", "--data-dir", str(tmp_path / "mydata"),
                 "--model", "plain18", "--method", "jointrd", "--teacher-weights",
                 str(tmp_path / "t.pth"), "--dry-run"]) == 0
    assert "loaded and checked" in capsys.readouterr().out


def test_safetensors_given_as_teacher_checkpoint_names_the_flags(tmp_path, capsys):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    net = create_model("resnet20", num_classes=4)
    save_file(net.state_dict(), str(tmp_path / "t.safetensors"))
    line = _error(capsys, ["train", *SYNTH, "--model", "plain20", "--teacher-checkpoint",
                           str(tmp_path / "t.safetensors")])
    assert "--teacher-weights" in line and "--teacher timm:" in line
    torch.save(net.state_dict(), tmp_path / "t.pth")  # a bare state dict as a .pth: the same
    line = _error(capsys, ["train", *SYNTH, "--model", "plain20", "--teacher-checkpoint",
                           str(tmp_path / "t.pth")])
    assert "not a resdist checkpoint" in line and "--teacher-weights" in line


def test_student_of_another_layout_is_told_which_student_fits(capsys):
    line = _error(capsys, ["train", *SYNTH, "--model", "plain56", "--teacher", "resnet18",
                           "--set", "teacher.train=true"])
    assert "--model plain18" in line


def test_student_checkpoint_given_as_teacher_weights_says_so(tmp_path, capsys):
    kw = {"num_classes": 4, "in_chans": 3}
    write_checkpoint(tmp_path / "student.pth", "plain18", kw)
    line = _error(capsys, ["train", *SYNTH, "--model", "plain18", "--teacher-weights",
                           str(tmp_path / "student.pth")])
    assert "a resdist checkpoint of plain18" in line and "student's" in line


def test_data_dir_given_as_the_train_split_suggests_the_folder_above(tmp_path, capsys):
    write_imagefolder(tmp_path / "mydata", num_classes=2, n_train=1, n_val=1, size=24)
    line = _error(capsys, ["train", "--data", "imagefolder", "--data-dir",
                           str(tmp_path / "mydata" / "train"), "--model", "plain18",
                           "--epochs", "1", "--out", str(tmp_path / "run")])
    assert f"--data-dir {tmp_path / 'mydata'}" in line
    assert not (tmp_path / "run").exists()
