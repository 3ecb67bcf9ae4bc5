"""The hostile findings of reliability round 3 (docs/faults.md, "Round 3"): each fault a user
or a stranger's file can cause ends in one line on stderr and exit status 2, and nothing the
user owns is removed, replaced or mixed."""

import errno
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from resdist.cli import main
from resdist.engine import load_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from data_writers import write_imagefolder  # noqa: E402

TINY = ["--data", "synthetic", "--model", "plain20", "--batch-size", "32", "--no-progress",
        "--set", "data.synthetic_samples=96", "--set", "data.synthetic_size=8",
        "--set", "data.synthetic_channels=1", "--set", "data.limit_test=16",
        "--set", "model.width_mult=0.25", "--set", "train.tensorboard=false",
        "--device", "cpu"]
SYNTH = ["--data", "synthetic", "--set", "data.synthetic_channels=1",
         "--set", "data.synthetic_size=8", "--set", "data.synthetic_samples=32"]


def _train(out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def fails(args: list[str], capsys) -> str:
    """Run the CLI, expect exit status 2 and exactly one error line; return it."""
    got = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"resdist {args[0]}: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 1-epoch run of a 1-channel 8x8 plain20 (width 0.25, 10 classes)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(_train(run)) == 0
    return run


# --- argparse-one-line -------------------------------------------------------------------------

@pytest.mark.parametrize("args", [["predict", "--topk", "0", "m.onnx", "x.png"],
                                  ["train", "--epochs", "nan"], ["nosuchcommand"]])
def test_argparse_one_line(capsys, args):
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "error:" in lines[0] and "--help" in lines[0] and "usage:" not in lines[0]


# --- state-dict-values ---------------------------------------------------------------------------

def _state_file(tmp_path: Path, kind: str, width: float) -> Path:
    from resdist.models import create_model

    state = create_model("plain20", in_chans=1, num_classes=10, width_mult=width).state_dict()
    path = tmp_path / f"{kind}.pth"
    if kind == "int64":
        state = {k: v.to(torch.int64) if v.is_floating_point() else v for k, v in state.items()}
    elif kind == "bool":
        state = {k: v.bool() if v.is_floating_point() else v for k, v in state.items()}
    elif kind == "nan":
        state = {k: v * math.nan if v.is_floating_point() else v for k, v in state.items()}
    if kind == "not-torch":
        path.write_text("just some text, no tensors\n" * 4)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("kind,words", [("int64", "is torch.int64, the model keeps"),
                                        ("bool", "is torch.bool, the model keeps"),
                                        ("nan", "holds NaN or infinite values"),
                                        ("not-torch", "not a PyTorch file, or corrupt")])
@pytest.mark.parametrize("where", ["eval", "teacher-weights", "profile"])
def test_state_dict_values(tmp_path, capsys, kind, words, where):
    bad = _state_file(tmp_path, kind, 1.0 if where == "profile" else 0.25)
    args = {
        "eval": ["eval", "--model", "plain20", "--checkpoint", str(bad), *SYNTH,
                 "--set", "model.width_mult=0.25"],
        "teacher-weights": _train(tmp_path / "run", "--method", "kd", "--teacher", "plain20",
                                  "--teacher-weights", str(bad)),
        "profile": ["profile", f"plain20={bad}", "--no-latency", "--input-size", "8",
                    "--in-chans", "1"],
    }[where]
    line = fails(args, capsys)
    assert words in line and "weights_only" not in line and len(line) < 400
    assert not (tmp_path / "run" / "last.pth").exists()
