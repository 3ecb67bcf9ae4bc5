"""The hostile findings of round 4 (docs/faults.md, "Round 4"): one test per row, named as the
row. Each fault ends in one line on stderr, exit status 2, and nothing written or replaced."""

from __future__ import annotations

import errno
import pathlib
import pickle
import sys
from pathlib import Path

import pytest
import torch

from resdist.cli import main
from resdist.data.contract import contract_for_data
from resdist.engine.checkpoint import Checkpoint
from resdist.models import create_model

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from data_writers import write_cifar  # noqa: E402

KW = {"num_classes": 10, "in_chans": 3, "width_mult": 0.25}


def fails(args: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2 and exactly one error line; return it."""
    got = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == 2 and "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith(f"resdist {args[0]}: error: "), lines[0]
    return lines[0]


@pytest.fixture
def ckpt(tmp_path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "run" / "last.pth"
    contract = contract_for_data("cifar10", in_chans=3, image_size=32, num_classes=10)
    Checkpoint("plain8", KW, create_model("plain8", **KW).state_dict(),
               contract=contract).save(path)
    return path


def _damaged(src: Path, dst: Path, change) -> Path:
    """``src`` with its first BatchNorm variance (or first weight) changed, written past
    resdist's own checks, as a damaged or hostile file would be."""
    raw = torch.load(src, weights_only=True)
    state = next(v for v in raw.values() if isinstance(v, dict) and "conv1.weight" in v)
    change(state)
    torch.save(raw, dst)
    return dst


@pytest.mark.parametrize("how, words", [
    ("negative-variance", "holds negative variances"),
    ("sparse", "is not a dense tensor with data"),
    ("meta", "is not a dense tensor with data"),
])
def test_damaged_weights(ckpt, tmp_path, capsys, how, words):
    def change(state):
        if how == "negative-variance":
            key = next(k for k in state if k.endswith("running_var"))
            state[key] = -state[key] - 1  # finite, but every output is NaN
        else:
            w = state["conv1.weight"]
            state["conv1.weight"] = w.to_sparse() if how == "sparse" else w.to("meta")

    bad = _damaged(ckpt, tmp_path / "bad.pth", change)
    assert words in fails(["eval", "--checkpoint", str(bad), "--data", "synthetic"], capsys)
    out = tmp_path / "bad.onnx"
    assert words in fails(["export", "--checkpoint", str(bad), "--out", str(out)], capsys)
    assert not out.exists()


def test_export_full_disk_safetensors(ckpt, tmp_path, capsys, monkeypatch):
    pytest.importorskip("safetensors")
    out = tmp_path / "m.safetensors"
    args = ["export", "--checkpoint", str(ckpt), "--format", "safetensors", "--out", str(out)]
    assert main(args) == 0
    capsys.readouterr()
    before = out.read_bytes()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    line = fails(args, capsys)
    assert "no space left on the device; the previous file is kept" in line
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "run"]


def test_export_from_an_export(ckpt, tmp_path, capsys):
    onnx_file = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(onnx_file), "--opset",
                 "17"]) == 0
    capsys.readouterr()
    line = fails(["export", "--checkpoint", str(onnx_file), "--out", str(tmp_path / "b.onnx")],
                 capsys)
    assert "is an exported ONNX file; export starts from the resdist checkpoint" in line
    line = fails(["export", "--checkpoint", str(ckpt), "--out", str(onnx_file / "x.onnx")],
                 capsys)
    assert f"{onnx_file} is a file, not a folder" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "run"]


@pytest.mark.parametrize("names", [5, "airplane", None])
def test_cifar_class_names(ckpt, tmp_path, capsys, names):
    write_cifar(tmp_path / "cifar")
    meta = tmp_path / "cifar" / "cifar-10-batches-py" / "batches.meta"
    meta.write_bytes(pickle.dumps({b"label_names": names}, 2))
    line = fails(["eval", "--checkpoint", str(ckpt), "--data", "cifar10", "--data-dir",
                  str(tmp_path / "cifar")], capsys)
    assert "no list of 10 'label_names'" in line and str(meta) in line


@pytest.mark.parametrize("args, words", [
    (["train", "--data", "synthetic", "--device", "meta", "--epochs", "1"], "meta devices"),
    (["train", "--data", "synthetic", "--set", "train.device=xla"], "xla devices"),
    (["eval", "--data", "synthetic", "--device", "meta"], "meta devices"),
    (["eval", "--data", "synthetic", "--device", "bogus:3"], "is not a device"),
])
def test_unsupported_device(ckpt, tmp_path, capsys, args, words):
    """torch parses ``meta`` and ``xla``, but resdist neither trains nor scores on them: the
    device is refused before any file is read or written, not by a PyTorch traceback."""
    extra = ["--out", str(tmp_path / "new")] if args[0] == "train" else ["--checkpoint",
                                                                        str(ckpt)]
    line = fails([*args, *extra], capsys)
    assert words in line and "use auto, cpu, cuda, cuda:N or mps" in line
    assert not (tmp_path / "new").exists()


def test_teacher_name_mismatch(tmp_path, capsys):
    """``--teacher resnet20 --teacher-checkpoint`` of a ResNet-8 run: the run would have
    trained through the checkpoint's ResNet-8 and recorded resnet20 in its config."""
    contract = contract_for_data("synthetic", in_chans=3, image_size=32, num_classes=4)
    kw = {"num_classes": 4, "in_chans": 3}
    teacher = tmp_path / "teacher.pth"
    Checkpoint("resnet8", kw, create_model("resnet8", **kw).state_dict(),
               contract=contract).save(teacher)
    synth = ["--data", "synthetic", "--method", "jointrd", "--model", "plain8", "--dry-run",
             "--set", "data.synthetic_classes=4", "--teacher-checkpoint", str(teacher)]
    line = fails(["train", *synth, "--teacher", "resnet20"], capsys)
    assert "holds resnet8, not the teacher resnet20" in line and "drop --teacher" in line
    # a preset that names its teacher (resnet18) and a checkpoint set under it by --set
    line = fails(["train", "--preset", "cifar10/plain18-jointrd", *synth[:-2], "--set",
                  f"teacher.checkpoint={teacher}"], capsys)
    assert "holds resnet8, not the teacher resnet18" in line and "teacher.name" in line
    line = fails(["train", *synth, "--teacher-weights", "DEFAULT"], capsys)
    assert "name two teachers" in line
    # no --teacher, the matching one, or a preset that names its own teacher and published
    # weights (a checkpoint given by flag replaces both): the checkpoint's network is the teacher
    for extra in ([], ["--teacher", "resnet8"], ["--preset", "imagenet/plain18-jointrd", "--stem", "cifar"]):
        assert main(["train", *synth, *extra]) == 0
        out = capsys.readouterr().out
        assert "through teacher resnet8 (" in out and "IMAGENET1K_V1" not in out


@pytest.mark.parametrize("extra, words", [
    ({"foo": 1}, "plain8 takes no argument 'foo' (was the file or config written for another"),
    ({"layers": [1, 1, 1]}, "plain8 sets 'layers' itself; leave it out"),
])
def test_stranger_model_kwargs(tmp_path, capsys, extra, words):
    """A checkpoint whose builder arguments the network does not take: the one line names the
    argument, not ``ResNet.__init__()``."""
    path = tmp_path / "last.pth"
    contract = contract_for_data("cifar10", in_chans=3, image_size=32, num_classes=10)
    Checkpoint("plain8", {**KW, **extra}, create_model("plain8", **KW).state_dict(),
               contract=contract).save(path)
    assert words in fails(["eval", "--checkpoint", str(path), "--data", "synthetic"], capsys)
    out = tmp_path / "m.onnx"
    assert words in fails(["export", "--checkpoint", str(path), "--out", str(out)], capsys)
    assert not out.exists()
