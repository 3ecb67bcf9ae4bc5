"""One test per row of docs/faults.md: every fault a user can cause is one line on stderr, exit
status 2 (130 for Ctrl-C), no traceback, and nothing lost or mixed."""

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

from resdist.cli import main
from resdist.config import Config
from resdist.engine import load_checkpoint
from resdist.engine import trainer as trainer_module
from resdist.engine.metrics import MetricsLogger
from resdist.engine.rundir import RunLock

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from data_writers import write_fmnist, write_idx, write_imagefolder  # noqa: E402

ROWS_DOC = Path(__file__).resolve().parents[1] / "docs" / "faults.md"
TINY = ["--data", "synthetic", "--model", "plain20", "--batch-size", "32", "--no-progress",
        "--set", "data.synthetic_samples=96", "--set", "data.synthetic_size=8",
        "--set", "data.synthetic_channels=1", "--set", "data.limit_test=16",
        "--set", "model.width_mult=0.25", "--set", "train.tensorboard=false",
        "--device", "cpu"]


def _train(out: Path, *extra: str, epochs: int = 1) -> list[str]:
    return ["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def fails(args: list[str], capsys, code: int = 2) -> str:
    """Run the CLI, expect exit status ``code`` and exactly one error line; return it."""
    got = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    if code == 2:
        assert lines[0].startswith(f"resdist {args[0]}: error: "), lines[0]
    return lines[0]


def ok(args: list[str], capsys) -> tuple[str, str]:
    got = main(args)
    cap = capsys.readouterr()
    assert got == 0, cap.err
    return cap.out, cap.err


def _epochs(run: Path) -> list[int]:
    return [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 1-epoch run (its last.pth is the good checkpoint of these tests)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert main(_train(run)) == 0
    return run


def test_every_row_of_the_fault_table_has_a_test():
    rows = re.findall(r"^\| `([a-z0-9-]+)` \|", ROWS_DOC.read_text(), flags=re.M)
    text = "".join(p.read_text() for p in Path(__file__).parent.glob("test_faults*.py"))
    assert len(rows) >= 15
    for row in rows:
        assert f"def test_{row.replace('-', '_')}" in text, row


# --- unsafe-file -----------------------------------------------------------------------------

class Payload:
    """Pickles as ``open(marker, "w")``: full unpickling creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("where", ["eval", "export", "profile", "resume", "teacher-checkpoint",
                                   "teacher-weights"])
def test_unsafe_file(tmp_path, capsys, where):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pth"
    torch.save({"model": Payload(marker), "model_name": "plain20"}, evil)
    run = tmp_path / "run"
    args = {
        "eval": ["eval", "--checkpoint", str(evil), "--data", "synthetic"],
        "export": ["export", "--checkpoint", str(evil), "--out", str(tmp_path / "m.onnx")],
        "profile": ["profile", str(evil), "--no-latency"],
        "resume": _train(run, "--resume"),
        "teacher-checkpoint": _train(run, "--method", "kd", "--teacher-checkpoint", str(evil)),
        "teacher-weights": _train(run, "--method", "kd", "--teacher-weights", str(evil)),
    }[where]
    if where == "resume":
        run.mkdir()
        evil.rename(run / "last.pth")
    line = fails(args, capsys)
    assert "contains code or objects that are not allowed" in line
    assert "resdist will not execute it" in line
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.script/save are deprecated
@pytest.mark.parametrize("where", ["predict", "eval", "export", "teacher-weights", "resume"])
def test_torchscript_file(tmp_path, capsys, monkeypatch, where):
    scripted = tmp_path / "model.pt"
    torch.jit.save(torch.jit.script(torch.nn.Conv2d(1, 2, 3)), str(scripted),
                   _extra_files={"input_contract.json": "{}"})

    def never(*args, **kwargs):
        raise AssertionError("torch.jit.load ran: the file's code would have run")

    monkeypatch.setattr(torch.jit, "load", never)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    run = tmp_path / "run"
    args = {
        "predict": ["predict", str(scripted), str(image)],
        "eval": ["eval", "--checkpoint", str(scripted), "--data", "synthetic"],
        "export": ["export", "--checkpoint", str(scripted), "--out", str(tmp_path / "m.onnx")],
        "teacher-weights": _train(run, "--method", "kd", "--teacher-weights", str(scripted)),
        "resume": _train(run, "--resume"),
    }[where]
    if where == "resume":
        run.mkdir()
        scripted.rename(run / "last.pth")
    line = fails(args, capsys)
    assert "is a TorchScript file; loading one runs the code it carries" in line
    if where in ("predict", "eval"):
        assert "--trust-torchscript" in line


def test_corrupt_checkpoint(tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    assert "cannot read checkpoint" in fails(["eval", "--checkpoint", str(bad)], capsys)


def test_weights_do_not_fit(tmp_path, capsys, trained):
    ckpt = torch.load(trained / "last.pth", weights_only=True)
    ckpt["model_name"] = "plain32"
    torch.save(ckpt, tmp_path / "other.pth")
    line = fails(["eval", "--checkpoint", str(tmp_path / "other.pth")], capsys)
    assert "do not fit" in line
    # --resume into a folder whose last.pth holds another network (no config.yaml to compare)
    run = tmp_path / "run"
    run.mkdir()
    (run / "last.pth").write_bytes((trained / "last.pth").read_bytes())
    assert "do not fit" in fails(_train(run, "--resume", "--model", "plain32"), capsys)
    assert sorted(p.name for p in run.iterdir()) == ["last.pth"]


def test_run_exists(tmp_path, capsys, trained):
    line = fails(_train(trained), capsys)
    assert f"{trained} already holds a run" in line
    assert "--resume" in line and "new --out" in line and "--overwrite" in line


def test_run_locked(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock(run):
        line = fails(_train(run), capsys)
    assert f"{run} is in use by another training (pid {os.getpid()}" in line
    assert not (run / "config.yaml").exists()


@pytest.mark.parametrize("change,key", [
    (["--method", "kd"], "distill.method='ce'"), (["--lr", "0.001"], "optim.lr="),
    (["--schedule", "cosine"], "optim.schedule='multistep'"), (["--seed", "5"], "train.seed=0"),
    (["--batch-size", "16"], "data.batch_size=32"),
    (["--set", "data.augment=false"], "data.augment=True"),
    (["--set", "data.synthetic_samples=64"], "data.synthetic_samples=96"),
])
def test_resume_mismatch(tmp_path, capsys, trained, change, key):
    before = {p.name: p.read_bytes() for p in trained.iterdir()}
    line = fails(_train(trained, "--resume", *change), capsys)
    assert key in line and "--config" in line and "new --out" in line
    assert {p.name: p.read_bytes() for p in trained.iterdir()} == before  # config.yaml too


@pytest.mark.parametrize("case", ["file", "under-file"])
def test_out_not_a_folder(tmp_path, capsys, case):
    f = tmp_path / "f"
    f.write_text("x")
    out = f if case == "file" else f / "run"
    line = fails(_train(out), capsys)
    assert str(out) in line and ("not a folder" in line or "Not a directory" in line)
    assert f.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_not_a_folder_when_not_writable(tmp_path, capsys):
    tmp_path.chmod(0o500)
    try:
        line = fails(_train(tmp_path / "run"), capsys)
    finally:
        tmp_path.chmod(0o700)
    assert "Permission denied" in line or "permission denied" in line


def _tmpfs(path: Path, size: int) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("how", ["tmpfs", "simulated"])
def test_disk_full(tmp_path, capsys, monkeypatch, trained, how):
    run = tmp_path / "fs" / "run"
    if how == "tmpfs":
        # room for epoch 1's last.pth + best.pth and the small files, not for a third copy
        size = 2 * (trained / "last.pth").stat().st_size + 48 * 1024
        if not _tmpfs(tmp_path / "fs", size):
            pytest.skip("needs root and tmpfs mounts")
    else:
        real = torch.save

        def save(obj, f, *a, **k):
            if isinstance(obj, dict) and obj.get("epoch") == 2:
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(obj, f, *a, **k)

        monkeypatch.setattr(torch, "save", save)
    try:
        line = fails(_train(run, epochs=3), capsys)
        assert "cannot write" in line and "no space left on the device" in line
        assert "(epoch 1) is kept" in line and "metrics of epoch 2 are not written" in line
        assert "--resume" in line
        assert load_checkpoint(run / "last.pth").epoch == 1
        assert _epochs(run) == [1]
        assert not list(run.glob(".*.tmp"))
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(tmp_path / "fs")], check=False)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_killed_mid_write_keeps_the_previous_file(tmp_path, trained, fmt):
    """``resdist export`` over a good file, killed (SIGKILL) while the new file is half written:
    the old file is intact, and the next export removes the dead process's temporary."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    args = ["export", "--checkpoint", str(trained), "--format", fmt, "--out", str(out)]
    if fmt == "onnx":  # the file is written the same way at any opset; 17's exporter is quicker
        args += ["--opset", "17"]
    assert main(args) == 0
    good = out.read_bytes()
    code = f"""
import os, signal
import torch
from resdist.cli import main

def dying_write(obj, f, *a, **k):
    with open(f, "wb") if isinstance(f, (str, os.PathLike)) else open(f.name, "wb") as g:
        g.write(b"half a model")
    os.kill(os.getpid(), signal.SIGKILL)

torch.jit.save = dying_write
try:
    import onnx
    onnx.save = dying_write
except ImportError:
    pass
main({args!r})
"""
    got = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert got.returncode == -9, got.stderr.decode()[-2000:]
    assert out.read_bytes() == good
    assert len([p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]) == 1
    assert main(args) == 0
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("how", ["tmpfs", "simulated"])
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save are deprecated
def test_export_disk_full(tmp_path, capsys, monkeypatch, trained, how, fmt):
    pytest.importorskip("onnx")
    fs = tmp_path / "fs"
    out = fs / ("model.onnx" if fmt == "onnx" else "model.pt")
    args = ["export", "--checkpoint", str(trained / "last.pth"), "--out", str(out),
            "--format", fmt, *(["--opset", "17"] if fmt == "onnx" else [])]  # quicker exporter
    good = tmp_path / out.name
    ok([*args[:4], str(good), *args[5:]], capsys)
    if how == "tmpfs":
        if not _tmpfs(fs, good.stat().st_size + good.stat().st_size // 2):  # no room for two
            pytest.skip("needs root and tmpfs mounts")
    else:
        import onnx

        def full(obj, f, *a, **k):
            if isinstance(f, str | Path):
                with open(f, "wb") as out:
                    out.write(b"partial")
            else:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(onnx, "save", full)
        monkeypatch.setattr(torch.jit, "save", full)
    try:
        fs.mkdir(exist_ok=True)
        shutil.copyfile(good, out)  # the previous good export
        line = fails(args, capsys)
        assert f"cannot write the {'ONNX' if fmt == 'onnx' else 'TorchScript'} file" in line
        assert "no space left on the device; the previous file is kept" in line
        assert out.read_bytes() == good.read_bytes()
        assert [p.name for p in fs.iterdir()] == [out.name]  # no temporary left
    finally:
        if how == "tmpfs":
            subprocess.run(["umount", str(fs)], check=False)


def test_crash_and_resume(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real = MetricsLogger.log

    def killed(self, row):  # killed after epoch 2's checkpoint, before its metrics row
        if row["epoch"] == 2:
            raise KeyboardInterrupt
        real(self, row)

    monkeypatch.setattr(MetricsLogger, "log", killed)
    line = fails(_train(run, epochs=3), capsys, code=130)
    assert line == f"interrupted; {run / 'last.pth'} is kept; continue with --resume"
    monkeypatch.undo()
    (run / f".last.pth.{uuid.uuid4().hex[:8]}.tmp").write_bytes(b"torn")
    ok(_train(run, "--resume", epochs=3), capsys)
    assert _epochs(run) == [1, 2, 3] and not list(run.glob(".*.tmp"))


def test_non_finite_loss(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real = trainer_module.accumulation_step
    steps = {"n": 0}

    def poisoned(*args, **kw):
        outs = real(*args, **kw)
        steps["n"] += 1
        if steps["n"] == 4:  # epoch 2, step 0 (3 steps per epoch)
            outs[-1]["loss"] = torch.tensor(float("inf"))
        return outs

    monkeypatch.setattr(trainer_module, "accumulation_step", poisoned)
    line = fails(_train(run, epochs=2), capsys)
    # checked every train.check_every steps and at the epoch's end: the steps since the last check
    assert "loss became non-finite at epoch 2, steps 0-2" in line
    assert "(epoch 1) is kept" in line and "lower the learning rate (--lr)" in line


@pytest.mark.parametrize("args,key", [
    (["--lr", "nan"], "optim.lr"), (["--set", "optim.momentum=-0.5"], "optim.momentum"),
    (["--set", "train.eval_every=0"], "train.eval_every"), (["--epochs", "0"], "train.epochs"),
    (["--set", "distill.dc=2"], "distill.dc"), (["--set", "optim.weight_decay=-1"],
                                                 "optim.weight_decay"),
    (["--set", "data.num_workers=-1"], "data.num_workers"),
    (["--set", "distill.kd_temperature=0"], "distill.kd_temperature"),
    (["--set", "train.device=gpu7"], "train.device"),
])
def test_bad_config_value(tmp_path, capsys, args, key):
    out = tmp_path / "run"
    line = fails(["train", *TINY, "--out", str(out), *args], capsys)
    assert key in line
    assert not out.exists()  # checked before anything starts


def test_unknown_config_key(tmp_path, capsys):
    assert "optim.lrr" in fails(_train(tmp_path / "r", "--set", "optim.lrr=1"), capsys)
    bad = tmp_path / "c.yaml"
    bad.write_text("train: [unclosed\n")
    assert "not valid YAML" in fails(["train", "--config", str(bad)], capsys)


def test_missing_data(tmp_path, capsys):
    line = fails(_train(tmp_path / "r", "--data", "fashion-mnist", "--data-dir",
                        str(tmp_path / "nothing")), capsys)
    assert str(tmp_path / "nothing") in line
    assert not (tmp_path / "r").exists()  # the folder the failed run created is gone again


def _imagefolder_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", "imagefolder", "--data-dir", str(root), "--model", "plain20",
            "--epochs", "1", "--batch-size", "4", "--out", str(out), "--no-progress",
            "--device", "cpu", "--set", "data.image_size=16", "--set", "data.num_workers=0",
            "--set", "model.width_mult=0.25", "--set", "train.tensorboard=false", *extra]


def test_bad_image(tmp_path, capsys):
    root = tmp_path / "imgs"
    classes = write_imagefolder(root, num_classes=2, n_train=4, n_val=2, size=20)
    empty = root / "train" / classes[0] / "empty.JPEG"
    empty.write_bytes(b"")
    (root / "train" / classes[1] / "garbage.JPEG").write_bytes(b"\x00 not an image" * 10)
    (root / "val" / classes[1] / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    line = fails(_imagefolder_args(root, tmp_path / "a"), capsys)
    assert str(empty) in line and "empty file (0 bytes)" in line
    assert "skip_bad_images" in line
    assert not (tmp_path / "a" / "last.pth").exists()
    out, err = ok(_imagefolder_args(root, tmp_path / "b", "--set", "data.skip_bad_images=true"),
                  capsys)
    assert "left out 2 unreadable image files" in err and "left out 1 unreadable" in err
    assert load_checkpoint(tmp_path / "b" / "last.pth").metrics["test_samples"] == 4


def test_empty_split(tmp_path, capsys):
    data = tmp_path / "fm"
    write_fmnist(data, gz=False, n_train=40, n_test=4)
    write_idx(data / "t10k-images-idx3-ubyte", torch.zeros(0, 28, 28, dtype=torch.uint8).numpy())
    write_idx(data / "t10k-labels-idx1-ubyte", torch.zeros(0, dtype=torch.uint8).numpy())
    line = fails(_train(tmp_path / "r", "--data", "fashion-mnist", "--data-dir", str(data)),
                 capsys)
    assert "test set is empty" in line


def test_eval_no_val_split(capsys, trained):
    line = fails(["eval", "--checkpoint", str(trained / "last.pth"), "--split", "val"], capsys)
    assert "no validation split" in line


def test_os_error(tmp_path, capsys, monkeypatch):
    def denied(self, path=None):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(Config, "to_yaml", denied)
    out = tmp_path / "run"
    line = fails(_train(out), capsys)
    assert f"Permission denied: {out / 'config.yaml'}" in line


def test_bf16_without_native_support(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, "cpu_has_native_bf16", lambda: False)
    out, _ = ok(_train(tmp_path / "run", "--amp", "bf16"), capsys)
    assert len([ln for ln in out.splitlines() if ln.startswith("warning: this CPU has no "
                                                                "native bf16")]) == 1


def test_channels_last_onednn_defect(tmp_path):
    """`resdist train --model resnet20 --set model.width_mult=0.25 --channels-last` on one thread
    and oneDNN's AVX2 kernels: segfaulted at step 0 before the guard; now one line and a run."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2",
           "ATEN_CPU_CAPABILITY": "avx2"}
    args = ["--data", "synthetic", "--model", "resnet20", "--set", "model.width_mult=0.25",
            "--set", "data.synthetic_samples=64", "--set", "data.synthetic_size=32",
            "--set", "data.limit_test=16", "--set", "train.tensorboard=false",
            "--batch-size", "32", "--epochs", "1", "--device", "cpu", "--no-progress"]
    got = subprocess.run([sys.executable, "-m", "resdist", "train", *args, "--channels-last",
                          "--out", str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert got.returncode == 0, got.stderr[-2000:]
    notes = [ln for ln in got.stdout.splitlines() if ln.startswith("channels-last: ")]
    assert len(notes) == 1 and "kept in NCHW" in notes[0], got.stdout
    assert "layer2.0.downsample.0" in notes[0]
    assert (tmp_path / "run" / "last.pth").exists()


def test_interrupt(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    real = trainer_module.Trainer.train_epoch

    def ctrl_c(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(self, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", ctrl_c)
    line = fails(_train(run, epochs=2), capsys, code=130)
    assert line == f"interrupted; {run / 'last.pth'} is kept; continue with --resume"
    assert load_checkpoint(run / "last.pth").epoch == 1
    assert not (run / ".lock").exists()


# --- strange-checkpoint-field ----------------------------------------------------------------

@pytest.mark.parametrize("field, value, words", [
    ("model_kwargs", "num_classes=4", "model_kwargs must be a mapping"),
    ("model_kwargs", {"num_classes": 4.5, "in_chans": 1}, "num_classes must be a whole number"),
    ("config", ["data"], "config must be a mapping"),
    ("config", {"data": {"batch_size": "many"}}, "data.batch_size must be an integer"),
    ("epoch", "1", "epoch must be a whole number"),
    ("model_name", "../../etc/passwd", "is not a model resdist builds"),
    ("input_contract", {"input_shape": [1, 8, 8], "color_mode": "L", "resize": 8,
                        "mean": [float("nan")], "std": [1.0], "class_names": []},
     "finite numbers"),
])
@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_strange_checkpoint_field(tmp_path, capsys, trained, field, value, words, command):
    raw = torch.load(trained / "last.pth", weights_only=True)
    raw[field] = value
    path = tmp_path / "odd.pth"
    torch.save(raw, path)
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    args = {"eval": ["eval", "--checkpoint", str(path)],
            "predict": ["predict", str(path), str(image)],
            "export": ["export", "--checkpoint", str(path), "--format", "torchscript",
                       "--out", str(tmp_path / "m.pt")]}[command]
    if command != "eval" and value == {"data": {"batch_size": "many"}}:
        ok(args, capsys)  # predict and export never use the run's settings
        return
    line = fails(args, capsys)
    assert words in line and str(path) in line
    assert not (tmp_path / "m.pt").exists()


# --- model-too-large -------------------------------------------------------------------------

@pytest.mark.parametrize("dry_run", [False, True])
def test_model_too_large(tmp_path, capsys, dry_run):
    args = _train(tmp_path / "r", "--set", "model.width_mult=1e6", *(["--dry-run"] * dry_run))
    line = fails(args, capsys)
    assert "more than the" in line and "of memory free on this machine" in line
    assert not (tmp_path / "r").exists()


# --- teacher-does-not-fit --------------------------------------------------------------------

def test_teacher_does_not_fit(tmp_path, capsys):
    rgb = tmp_path / "rgb"
    ok(_train(rgb, "--model", "resnet20", "--set", "data.synthetic_channels=3"), capsys)
    grey = tmp_path / "grey"
    line = fails(_train(grey, "--method", "kd", "--teacher-checkpoint", str(rgb)), capsys)
    assert "takes 3-channel images, the data has 1" in line
    assert not grey.exists()  # nothing left behind: the next attempt needs no --overwrite
    plain = tmp_path / "plain"
    ok(_train(plain), capsys)
    line = fails(_train(tmp_path / "s", "--method", "jointrd", "--teacher-checkpoint",
                        str(plain)), capsys)
    assert "a network without shortcuts" in line and "--model resnet20" in line
    assert not (tmp_path / "s").exists()


# --- high-bit-depth-image --------------------------------------------------------------------

def test_high_bit_depth_image(tmp_path, capsys, trained, monkeypatch):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "8.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "16.png")
    by8, _ = ok(["predict", str(trained), str(tmp_path / "8.png"), "--json"], capsys)
    by16, _ = ok(["predict", str(trained), str(tmp_path / "16.png"), "--json"], capsys)
    assert json.loads(by8)[0]["top"] == json.loads(by16)[0]["top"]
    Image.fromarray(grey.astype(np.float32)).save(tmp_path / "f.tiff")
    line = fails(["predict", str(trained), str(tmp_path / "f.tiff")], capsys)
    assert "floating-point image" in line
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20)  # 8x8 = 64 pixels: a "bomb"
    line = fails(["predict", str(trained), str(tmp_path / "8.png")], capsys)
    assert "decompression bomb" in line
    assert "20 pixels" not in line  # Pillow refuses at twice its limit: no second number
    root = tmp_path / "imgs"
    write_imagefolder(root, num_classes=2, n_train=4, n_val=2, size=20)
    line = fails(_imagefolder_args(root, tmp_path / "a"), capsys)
    assert "decompression bomb" in line and "corrupt" not in line


# --- folder-link -----------------------------------------------------------------------------

def test_folder_link(tmp_path, capsys):
    root = tmp_path / "imgs"
    classes = write_imagefolder(root, num_classes=2, n_train=4, n_val=2, size=20)
    link = root / "train" / classes[0] / "up"
    link.symlink_to("..")
    line = fails(_imagefolder_args(root, tmp_path / "a"), capsys)
    assert str(link) in line and "does not follow links to folders" in line
    assert not (tmp_path / "a").exists()
    link.unlink()
    other = tmp_path / "elsewhere"
    shutil.copytree(root / "val" / classes[1], other)
    (root / "train" / classes[0] / "more").symlink_to(other)  # a link out of the data root
    assert "does not follow links" in fails(_imagefolder_args(root, tmp_path / "b"), capsys)


# --- bad-yaml --------------------------------------------------------------------------------

def test_bad_yaml(tmp_path, capsys):
    listing = tmp_path / "list.yaml"
    listing.write_text("- data\n- model\n")
    line = fails(["train", "--config", str(listing), "--dry-run"], capsys)
    assert "must be a mapping of sections" in line
    line = fails(_train(tmp_path / "r", "--set", "data.batch_size=[1", "--dry-run"), capsys)
    assert "not valid YAML" in line and "data.batch_size=[1" in line
    line = fails(_train(tmp_path / "r", "--seed", str(10**20), "--dry-run"), capsys)
    assert "train.seed must lie in [0, 4.29497e+09]" in line
    garbage = tmp_path / "garbage.yaml"
    garbage.write_bytes(bytes(range(128, 256)) * 3)
    assert "is not text" in fails(["train", "--config", str(garbage), "--dry-run"], capsys)
    line = fails(_train(tmp_path / "r", "--set", "data.synthetic_samples=1000000000000"), capsys)
    assert "the synthetic data set would need" in line and "data.synthetic_samples" in line
    assert not (tmp_path / "r").exists()


def test_damaged_optimizer_state_is_refused_on_resume(tmp_path, capsys, trained):
    raw = torch.load(trained / "last.pth", weights_only=True)
    for state in raw["optimizer"]["state"].values():
        for k, v in state.items():
            if isinstance(v, torch.Tensor) and v.dim():
                state[k] = torch.zeros(2)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    torch.save(raw, run / "last.pth")
    before = (run / "last.pth").read_bytes()
    line = fails(_train(run, "--resume", epochs=2), capsys)
    assert "optimiser state" in line and "damaged" in line
    assert (run / "last.pth").read_bytes() == before


# --- bad-contract / truncated-export --------------------------------------------------------

def test_bad_contract(tmp_path, capsys, trained):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    good = tmp_path / "m.onnx"
    ok(["export", "--checkpoint", str(trained), "--out", str(good)], capsys)
    model = onnx.load(good)
    for prop in model.metadata_props:
        if prop.key == "input_contract":
            prop.value = json.dumps({**json.loads(prop.value), "std": [0.0]})
    onnx.save(model, tmp_path / "bad.onnx")
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    for args in (["predict", str(tmp_path / "bad.onnx"), str(image)],
                 ["eval", "--checkpoint", str(tmp_path / "bad.onnx"), "--data", "synthetic"]):
        line = fails(args, capsys)
        assert "positive std" in line and "bad.onnx" in line


def test_truncated_export(tmp_path, capsys, trained):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    good = tmp_path / "m.onnx"
    ok(["export", "--checkpoint", str(trained), "--out", str(good)], capsys)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (8, 8)).save(image)
    for args in (["predict", str(cut), str(image)],
                 ["eval", "--checkpoint", str(cut), "--data", "synthetic"]):
        line = fails(args, capsys)
        assert "truncated" in line and "export it again" in line


# --- suite-record-mismatch --------------------------------------------------------------------

def test_suite_record_mismatch(tmp_path, capsys, monkeypatch, tiny_run):
    """Records or run folders of a suite made with other settings are refused, never mixed."""
    from resdist.experiments import suites

    monkeypatch.setattr(suites, "suite_settings", lambda name: tiny_run)
    args = ["reproduce", "fashion-mnist", "--seeds", "0", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "res")]
    ok(args, capsys)
    report = tmp_path / "res" / "accuracy.json"
    before = report.read_text()
    line = fails([*args, "--set", "optim.lr=0.01"], capsys)
    assert "was measured with other settings (differs in: optim.lr)" in line
    assert "another --results folder" in line and report.read_text() == before
    record = tmp_path / "res" / "runs" / "fashion-mnist" / "seed0" / "resnet20-ce.json"
    good = record.read_text()
    record.write_text("{torn")
    assert "is unreadable" in fails(args, capsys)
    record.write_text(good.replace('"machine"', '"machin"'))
    assert "is unreadable (missing machine)" in fails(args, capsys)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    line = fails([*args[:-1], str(blocker / "res")], capsys)  # --results under a file
    assert "cannot create the run records folder" in line and "choose another --results" in line
    record.write_text(good)
    shutil.rmtree(tmp_path / "res")  # no records: finished run folders are reused ...
    out, _ = ok(args, capsys)
    assert out.count("finished run reused") == len(suites.STUDENT_ROWS) + 1
    shutil.rmtree(tmp_path / "res")  # ... but only with the same settings
    line = fails([*args, "--set", "optim.lr=0.01"], capsys)
    assert "holds a run made with other settings" in line and "another --out" in line


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    from resdist.engine import CheckpointError

    with pytest.raises(CheckpointError):
        main(["--debug", "eval", "--checkpoint", str(tmp_path / "none.pth")])
    monkeypatch.setenv("RESDIST_DEBUG", "1")
    with pytest.raises(CheckpointError):
        main(["eval", "--checkpoint", str(tmp_path / "none.pth")])


def test_eval_scores_the_full_test_set_unless_limited(capsys, trained):
    # the run scored 16 test images (data.limit_test); eval scores all 24 unless told otherwise
    out, _ = ok(["eval", "--checkpoint", str(trained / "last.pth")], capsys)
    assert "(24 images)" in out
    out, _ = ok(["eval", "--checkpoint", str(trained / "last.pth"), "--limit-test", "5"], capsys)
    assert "(5 images)" in out
    out, _ = ok(["eval", "--checkpoint", str(trained / "last.pth"),
                 "--set", "data.synthetic_samples=48"], capsys)
    assert "(12 images)" in out


def test_stem_mismatch_names_the_fix_and_small_features_warn(tmp_path, capsys):
    from resdist.models import create_model

    weights = tmp_path / "resnet18.pth"  # a torchvision-layout state dict: 7x7 ImageNet stem
    torch.save(create_model("resnet18", num_classes=4).state_dict(), weights)
    args = ["train", "--data", "synthetic", "--model", "plain18", "--batch-size", "16",
            "--no-progress", "--device", "cpu", "--epochs", "1", "--set",
            "data.synthetic_samples=32", "--set", "data.synthetic_classes=4", "--set",
            "data.synthetic_size=16", "--set", "train.tensorboard=false"]
    line = fails([*args, "--out", str(tmp_path / "a"), "--stem", "cifar", "--method", "kd",
                  "--teacher-weights", str(weights)], capsys)
    assert "conv1.weight" in line and "use --stem imagenet" in line
    out, err = ok([*args, "--out", str(tmp_path / "b")], capsys)
    assert "leave 1x1 feature maps" in out + err and "--stem cifar" in out + err
    out, err = ok([*args, "--out", str(tmp_path / "c"), "--stem", "cifar"], capsys)
    assert "feature maps" not in out + err
