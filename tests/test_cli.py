import subprocess
import sys

import pytest

from resdist.cli import main


def _run(args, capsys):
    code = main(args)
    cap = capsys.readouterr()
    return code, cap.out, cap.err


def test_help_lists_commands():
    out = subprocess.run([sys.executable, "-m", "resdist", "--help"], capture_output=True,
                         text=True, check=True).stdout
    for cmd in ("train", "eval", "demo"):
        assert cmd in out


@pytest.mark.parametrize("args,match", [
    (["train", "--data", "synthetic", "--model", "plain99", "--epochs", "1"], "unknown model"),
    (["train", "--set", "optim.nope=1"], "optim.nope"),
    (["train", "--data", "fashion-mnist", "--data-dir", "/nonexistent/fm", "--epochs", "1"],
     "/nonexistent/fm"),
    (["train", "--data", "synthetic", "--method", "jointrd", "--epochs", "1"],
     "teacher-checkpoint"),
    (["eval", "--checkpoint", "/nonexistent/last.pth"], "checkpoint not found"),
    (["train", "--data", "synthetic", "--device", "gpu0", "--epochs", "1"], "train.device"),
    (["train", "--data", "synthetic", "--limit-train", "0", "--epochs", "1"], "data.limit_train"),
    (["train", "--data", "synthetic", "--set", "model.stem=foo", "--epochs", "1"], "unknown stem"),
])
def test_user_errors_are_reported_without_traceback(args, match, capsys, tmp_path):
    code, out, err = _run(args + (["--out", str(tmp_path)] if args[0] == "train" else []), capsys)
    assert code == 2
    assert match in err
    assert "Traceback" not in err and err.startswith(f"resdist {args[0]}: error: ")


def test_train_then_eval(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, _ = _run(["train", "--data", "synthetic", "--model", "plain20", "--epochs", "1",
                         "--batch-size", "64", "--out", str(run), "--no-progress",
                         "--set", "data.synthetic_samples=256", "--set", "model.width_mult=0.5"],
                        capsys)
    assert code == 0 and "test top-1" in out
    code, out, _ = _run(["eval", "--checkpoint", str(run / "last.pth"), "--data", "synthetic"],
                        capsys)
    assert code == 0 and "top-1" in out and "top-5" in out
