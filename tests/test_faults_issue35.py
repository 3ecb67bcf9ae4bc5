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


def fails(args: list[str], capsys, progress: bool = False) -> str:
    """Run the CLI, expect exit status 2 and exactly one error line (after the progress lines
    a command prints on stderr, with ``progress``); return it."""
    got = main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == 2, err
    assert "Traceback" not in err
    if progress:
        lines = [ln for ln in lines if ln.startswith(f"resdist {args[0]}: ")]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"resdist {args[0]}: error: "), lines[0]
    return lines[0]


@pytest.fixture(autouse=True)
def _pillow_extensions(monkeypatch):
    """Pillow's SPIDER writer registers the written file's suffix as SPIDER for every later
    save in the process (``scan.jpg`` would make all ``.jpg`` files SPIDER); the tests that
    write one must not change how other tests' images are saved."""
    from PIL import Image

    Image.init()  # every plugin registered first: the copy must hold all their suffixes
    monkeypatch.setattr(Image, "EXTENSION", dict(Image.EXTENSION))


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


# --- huge-lr ---------------------------------------------------------------------------------

def test_huge_lr(tmp_path, capsys):
    line = fails(_train(tmp_path / "run", "--lr", "1e39"), capsys)
    assert "optim.lr must lie in (0, 3.40282e+38]" in line
    assert not (tmp_path / "run").exists()


# --- profile-input-too-large -----------------------------------------------------------------

def test_profile_input_too_large(capsys, monkeypatch):
    import resdist.deploy.profile.compare as compare

    def never(*a, **k):
        raise AssertionError("calibration ran: the input was not counted first")

    monkeypatch.setattr(compare, "calibrate_bn", never)
    line = fails(["profile", "plain20", "--no-latency", "--input-size", "60000"], capsys)
    assert "3x60000x60000 needs at least" in line and "--input-size" in line


# --- disk-full-small-files -------------------------------------------------------------------

def test_disk_full_small_files_lock(tmp_path, capsys, monkeypatch):
    real = os.write

    def full(fd, data):
        if data.startswith(b"pid "):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data)

    monkeypatch.setattr(os, "write", full)
    run = tmp_path / "run"
    line = fails(_train(run), capsys)
    assert f"cannot write the lock file {run / '.lock'}: no space left on the device" in line
    assert "make room" in line
    assert not run.exists()  # no lock-only folder


def test_disk_full_small_files_profile_out(tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnx")
    import pathlib

    real = pathlib.Path.write_text

    def full(self, text, *a, **k):
        if self.name.startswith(".profile."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *a, **k)

    monkeypatch.setattr(pathlib.Path, "write_text", full)
    out = tmp_path / "prof"
    line = fails(["profile", "plain20", "--no-latency", "--input-size", "8", "--out", str(out)],
                 capsys, progress=True)
    assert f"cannot write {out / 'profile.json'}: no space left on the device" in line
    assert "make room" in line and "check that the path exists" not in line
    assert not list(out.glob(".*.tmp"))


# --- best-after-disk-full --------------------------------------------------------------------

def test_best_after_disk_full(tmp_path, capsys, monkeypatch):
    """A full disk while best.pth is written; after making room, --resume writes it again."""
    run = tmp_path / "run"
    real = torch.save

    def full_for_best(obj, f, *a, **k):
        if Path(getattr(f, "name", "")).name.startswith(".best.pth") and obj["epoch"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_for_best)
    monkeypatch.setattr("resdist.engine.trainer.Trainer._evaluate",
                        lambda self: {"test_top1": float(len(self.logger.read()) + 1),
                                     "test_top5": 100.0})
    line = fails(_train(run, epochs=3), capsys)
    assert "best.pth: no space left on the device" in line and "--resume" in line
    assert load_checkpoint(run / "last.pth").epoch == 1
    monkeypatch.setattr(torch, "save", real)  # room made
    assert main(_train(run, "--resume", epochs=3)) == 0
    assert load_checkpoint(run / "best.pth").epoch == 3
    assert load_checkpoint(run / "last.pth").epoch == 3


# --- keep-foreign-files ----------------------------------------------------------------------

def test_keep_foreign_files_on_early_failure(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "tb").mkdir(parents=True)
    (run / "tb" / "mine.txt").write_text("the user's own notes")
    (run / "teacher.json").write_text('{"mine": true}')
    missing = tmp_path / "no-teacher.pth"
    fails(_train(run, "--method", "kd", "--teacher-checkpoint", str(missing)), capsys)
    assert (run / "tb" / "mine.txt").read_text() == "the user's own notes"
    assert (run / "teacher.json").read_text() == '{"mine": true}'
    assert not (run / "config.yaml").exists()


def test_keep_foreign_files_resume_without_last(tmp_path, capsys, trained):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "last.pth").unlink()
    best = (run / "best.pth").read_bytes()
    line = fails(_train(run, "--resume"), capsys)
    assert "holds best.pth and metrics.jsonl but no last.pth" in line and "--overwrite" in line
    assert (run / "best.pth").read_bytes() == best


# --- tampered-resume -------------------------------------------------------------------------

def _tamper_rng(d):
    d["rng"]["torch"] = "not a generator state"


def _tamper_rng_python(d):
    d["rng"]["python"] = [3, [1, 2], None]


def _tamper_scheduler(d):
    d["scheduler"]["last_epoch"] = "three"


def _tamper_lr(d):
    d["optimizer"]["param_groups"][0]["lr"] = "fast"


def _tamper_momentum_buffer(d):
    first = next(iter(d["optimizer"]["state"]))
    d["optimizer"]["state"][first]["momentum_buffer"] = "zeros"


@pytest.mark.parametrize("tamper,words", [
    (_tamper_rng, "rng: torch must be a uint8 tensor"),
    (_tamper_rng_python, "rng: python must be"),
    (_tamper_scheduler, "scheduler.last_epoch must be a finite number"),
    (_tamper_lr, "optimizer.param_groups[0].lr must be a finite number"),
    (_tamper_momentum_buffer, "optimizer.state must map parameters to their tensors"),
])
def test_tampered_resume(tmp_path, capsys, trained, tamper, words):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    d = torch.load(run / "last.pth", weights_only=True)
    tamper(d)
    torch.save(d, run / "last.pth")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    line = fails(_train(run, "--resume", epochs=2), capsys)
    assert str(run / "last.pth") in line and words in line, line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


# --- run-record-fields, reproduce-seeds, reproduce-locked ----------------------------------------

@pytest.fixture
def fake_suite(monkeypatch, tiny_run, trained):
    """``reproduce`` on tiny settings whose every run "trains" in no time: it copies a finished
    checkpoint and reports top-1 50%; the calls are counted."""
    import shutil
    from types import SimpleNamespace

    from resdist.engine import trainer
    from resdist.experiments import suites

    monkeypatch.setattr(suites, "suite_settings", lambda name: tiny_run)
    calls = []

    def fake_train(cfg):
        calls.append(cfg.train.out)
        Path(cfg.train.out).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(trained / "last.pth", Path(cfg.train.out) / "last.pth")
        return SimpleNamespace(history=[{"epoch": 1, "test_top1": 50.0, "epoch_time_s": 1.0}])

    monkeypatch.setattr(trainer, "train", fake_train)
    return calls


def _reproduce(tmp_path, *seeds, extra=()):
    return ["reproduce", "fashion-mnist", "--seeds", *map(str, seeds), "--out",
            str(tmp_path / "runs"), "--results", str(tmp_path / "res"), *extra]


@pytest.mark.parametrize("seeds,words", [
    ((0, -1), "each seed must be a whole number in [0, 2^32 - 1], got -1"),
    ((0, 0), "names seed 0 more than once"),
])
def test_reproduce_seeds(tmp_path, capsys, fake_suite, seeds, words):
    line = fails(_reproduce(tmp_path, *seeds), capsys)
    assert words in line
    assert fake_suite == [] and not (tmp_path / "res").exists()


@pytest.mark.parametrize("extra,words", [
    (("--runs", "plain20-ce", "nope"), "suite fashion-mnist has no run 'nope'; its runs are: "
     "resnet20-ce, plain20-ce"),
    (("--runs", "plain20-kd"), "plain20-kd of seed 0 learns from resnet20-ce, which is neither "
     "recorded nor trained for that seed yet; add resnet20-ce to --runs"),
    (("--runs", "plain20-ce", "--report-only"), "pass one of them"),
    (("--set", "model.name=plain20"), "suite tiny would train plain20-jointrd twice"),
])
def test_reproduce_runs(tmp_path, capsys, fake_suite, extra, words):
    args = _reproduce(tmp_path, 0, extra=extra)
    if "model.name=plain20" in extra:  # the tiny suite: its plain-20 row is its own
        args[1] = "tiny"
    line = fails(args, capsys)
    assert words in line
    assert fake_suite == [] and not list(tmp_path.rglob("*.json"))

def test_reproduce_locked(tmp_path, capsys, fake_suite):
    from resdist.experiments.records import RunStore

    store = RunStore(tmp_path / "res", "fashion-mnist")
    store.check_writable()
    lock = store.lock()
    try:
        line = fails(_reproduce(tmp_path, 0), capsys)
    finally:
        lock.release()
    assert "is in use by another reproduce" in line and "another --results" in line
    assert fake_suite == []


def test_reproduce_other_settings_other_seed(tmp_path, capsys, fake_suite):
    """A second suite with other settings and another seed into the same --results folder is
    refused before it trains: the folder would hold records of two settings."""
    assert main(_reproduce(tmp_path, 0)) == 0
    n = len(fake_suite)
    records = {p: p.read_bytes() for p in (tmp_path / "res").rglob("*.json")}
    line = fails(_reproduce(tmp_path, 1, extra=("--set", "optim.lr=0.01")), capsys)
    assert "was measured with other settings (differs in: optim.lr)" in line
    assert len(fake_suite) == n
    assert {p: p.read_bytes() for p in (tmp_path / "res").rglob("*.json")} == records


@pytest.mark.parametrize("field,value,words", [
    ("final_top1", "77.4", "final_top1 must be a percentage"),
    ("final_top1", math.nan, "NaN is not a number JSON allows"),
    ("best_top1", math.inf, "best_top1 must be a percentage in [0, 100], got inf"),
    ("final_top1", True, "final_top1 must be a percentage"),
    ("final_top1", -1e9, "final_top1 must be a percentage"),
    ("train_time_s", None, "train_time_s must be a number of seconds"),
    ("machine", {"cpu": "x", "torch": "2"}, "machine must name its cpu and torch"),
    ("settings", "lr=0.1", "settings must map sections"),
    ("curve", [], "curve must be a non-empty list"),
    # a record from another machine: its text goes into the reports and the terminal
    ("machine", {"cpu": "EVIL\n# Injected\x1b[2J", "cores": 2, "torch": "2"}, "printable"),
    ("machine", {"cpu": "x", "cores": 10**30, "torch": "2"}, "a whole number in [1, 65536]"),
    ("train_time_s", 1e308, "train_time_s must be a number of seconds in [0, 1e+08]"),
    ("best_top1", 0, "final_top1 and best_top1 must be the curve's last and best values"),
    ("run", "resnet8-ce", "it is the record of run 'resnet8-ce', seed 0"),
    ("seed", "0", "it is the record of run 'plain20-kd', seed '0'"),
])
def test_run_record_fields(tmp_path, capsys, fake_suite, field, value, words):
    assert main(_reproduce(tmp_path, 0)) == 0
    capsys.readouterr()
    path = tmp_path / "res" / "runs" / "fashion-mnist" / "seed0" / "plain20-kd.json"
    text = path.read_text()
    record = json.loads(text)
    record[field] = value
    text = json.dumps(record).replace("Infinity", "1e400")
    path.write_text(text)
    n = len(fake_suite)
    line = fails(_reproduce(tmp_path, 0), capsys)
    assert f"run record {path} is unreadable" in line and words in line, line
    assert "delete it" in line and len(fake_suite) == n


def test_a_run_record_that_is_a_looping_link_is_unreadable_not_missing(tmp_path, capsys,
                                                                        fake_suite):
    assert main(_reproduce(tmp_path, 0)) == 0
    path = tmp_path / "res" / "runs" / "fashion-mnist" / "seed0" / "plain20-kd.json"
    path.unlink()
    path.symlink_to(path.name)
    n = len(fake_suite)
    line = fails(_reproduce(tmp_path, 0), capsys)
    assert f"run record {path} is unreadable" in line and len(fake_suite) == n


# --- worker-error ----------------------------------------------------------------------------

def _folder_args(root: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", "imagefolder", "--data-dir", str(root), "--model", "plain20",
            "--epochs", "1", "--batch-size", "4", "--out", str(out), "--no-progress",
            "--device", "cpu", "--set", "data.image_size=16", "--set", "data.num_workers=1",
            "--set", "model.width_mult=0.25", "--set", "train.tensorboard=false", *extra]


def test_worker_error(tmp_path, capsys):
    """A JPEG truncated after its header no longer reaches a worker process: the scan decodes
    every JPEG that lacks its end marker, so the file is named in one line before training
    (and left out with skip_bad_images); a file that fails inside a worker is the next test."""
    root = tmp_path / "imgs"
    classes = write_imagefolder(root, num_classes=2, n_train=4, n_val=2, size=20)
    victim = root / "train" / classes[1] / f"{classes[1]}_1.JPEG"
    victim.write_bytes(victim.read_bytes()[:-50])  # the header and tables stay whole
    line = fails(_folder_args(root, tmp_path / "run"), capsys, progress=True)
    assert str(victim) in line and "truncated" in line
    assert "worker process" not in line and "Traceback" not in line and len(line) < 600
    assert not (tmp_path / "run" / "last.pth").exists()


def test_worker_error_file_removed(tmp_path, capsys, monkeypatch):
    """An image deleted while the workers read the folder: one line that says so."""
    from resdist.data import imagefolder

    root = tmp_path / "imgs"
    classes = write_imagefolder(root, num_classes=2, n_train=4, n_val=2, size=20)
    victim = root / "train" / classes[0] / f"{classes[0]}_2.JPEG"
    real = imagefolder._check_images

    def then_remove(dataset, folder, skip):
        real(dataset, folder, skip)
        victim.unlink(missing_ok=True)  # after the check, before training reads it

    monkeypatch.setattr(imagefolder, "_check_images", then_remove)
    line = fails(_folder_args(root, tmp_path / "run"), capsys, progress=True)
    assert str(victim) in line and "the file is gone" in line
    assert "worker process" not in line


# --- unreadable-class-folder -----------------------------------------------------------------

@pytest.mark.parametrize("how", ["chmod", "simulated"])
def test_unreadable_class_folder(tmp_path, capsys, monkeypatch, how):
    root = tmp_path / "imgs"
    classes = write_imagefolder(root, num_classes=2, n_train=2, n_val=1, size=12)
    locked = root / "train" / classes[1]
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root reads every folder")
        locked.chmod(0)
    else:
        real = os.scandir

        def scandir(path="."):
            if Path(path) == locked:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path)

        monkeypatch.setattr(os, "scandir", scandir)
    try:
        line = fails(_folder_args(root, tmp_path / "run"), capsys, progress=True)
    finally:
        locked.chmod(0o755)
    assert str(locked) in line and "permission denied" in line and "chmod" in line


# --- stranger-onnx ---------------------------------------------------------------------------

def _stranger_onnx(path: Path, contract_json: str, kind: str, classes: int = 10) -> Path:
    """A hand-made ONNX graph taking [N, 1, 8, 8] (or any size: ``dynamic-size``) whose output
    is odd in the way ``kind`` says."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    dims_in: list = ["N", 1, 8, 8]
    weight = np.full((64, classes), 0.01, dtype=np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f"], axis=1)]
    if kind == "nan":
        weight[:] = np.nan
    if kind == "dynamic-size":
        nodes = [helper.make_node("GlobalAveragePool", ["x"], ["g"]),
                 helper.make_node("Flatten", ["g"], ["f"], axis=1)]
        weight = np.full((1, classes), 0.01, dtype=np.float32)
        dims_in = ["N", 1, "H", "W"]
    inits = [numpy_helper.from_array(weight, "w")]
    nodes.append(helper.make_node("MatMul", ["f", "w"], ["z"]))
    out_type, out_dims, last = TensorProto.FLOAT, ["N", "K"], "z"
    if kind == "rank1":
        nodes.append(helper.make_node("ReduceSum", ["z"], ["y"], keepdims=0))
        out_dims, last = None, "y"
    elif kind == "rank3":
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "ax"))
        nodes.append(helper.make_node("Unsqueeze", ["z", "ax"], ["y"]))
        out_dims, last = ["N", 1, "K"], "y"
    elif kind == "string":
        nodes.append(helper.make_node("Cast", ["z"], ["y"], to=TensorProto.STRING))
        out_type, last = TensorProto.STRING, "y"
    elif kind == "zero-rows":
        for name in ("s", "e", "a"):
            inits.append(numpy_helper.from_array(np.array([0], dtype=np.int64), name))
        nodes.append(helper.make_node("Slice", ["z", "s", "e", "a"], ["y"]))
        last = "y"
    elif kind == "runtime-failure":  # a reshape that only works for a batch of 2
        inits.append(numpy_helper.from_array(np.array([2, classes], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["z", "shape"], ["y"]))
        last = "y"
    nodes.append(helper.make_node("Identity", [last], ["logits"]))
    graph = helper.make_graph(
        nodes, "stranger", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims_in)],
        [helper.make_tensor_value_info("logits", out_type, out_dims)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {"input_contract": contract_json})
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def contract_json(trained, tmp_path_factory) -> str:
    """The input contract of the trained run's ONNX export (1 x 8 x 8, 10 classes)."""
    pytest.importorskip("onnxruntime")
    import onnx

    path = tmp_path_factory.mktemp("export") / "m.onnx"
    assert main(["export", "--checkpoint", str(trained), "--out", str(path)]) == 0
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}["input_contract"]


@pytest.mark.parametrize("kind,words", [
    ("rank1", "outputs shape () for 1 image(s), not (images, classes)"),
    ("rank3", "outputs shape (1, 1, 10) for 1 image(s)"),
    ("string", "outputs object values, not logits"),
    ("zero-rows", "outputs shape (0, 10) for 1 image(s)"),
    ("runtime-failure", "ONNX Runtime failed on a batch of shape (1, 1, 8, 8)"),
    ("nan", "outputs NaN or infinite logits"),
    ("three", "outputs 3 logits, but 10 classes are named"),
])
def test_stranger_onnx_predict(tmp_path, capsys, contract_json, kind, words):
    from PIL import Image

    model = _stranger_onnx(tmp_path / f"{kind}.onnx", contract_json, kind,
                           classes=3 if kind == "three" else 10)
    image = tmp_path / "x.png"
    Image.new("L", (8, 8), 3).save(image)
    got = main(["predict", str(model), str(image), "--json"])
    cap = capsys.readouterr()
    assert got == 2 and cap.out == "", cap.out
    lines = cap.err.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and len(lines[0]) < 500, cap.err


def test_stranger_onnx_lone_surrogate(tmp_path, capsys, contract_json):
    d = json.loads(contract_json)
    d["class_names"][0] = "\ud800cat"
    model = _stranger_onnx(tmp_path / "s.onnx", json.dumps(d), "ok")
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp_path / "x.png")
    line = fails(["predict", str(model), str(tmp_path / "x.png"), "--json"], capsys)
    assert "lone surrogate" in line


@pytest.mark.parametrize("kind,extra,words", [
    ("dynamic-size", ["--set", "data.synthetic_size=16"],
     "takes 1x8x8 inputs but synthetic images are 1x16x16"),
    ("three", [], "outputs 3 logits, but 10 classes are named"),
    ("nan", [], "outputs NaN or infinite logits"),
])
def test_stranger_onnx_eval(tmp_path, capsys, contract_json, kind, extra, words):
    model = _stranger_onnx(tmp_path / f"{kind}.onnx", contract_json, kind,
                           classes=3 if kind == "three" else 10)
    line = fails(["eval", "--checkpoint", str(model), "--limit-test", "16", *extra], capsys)
    assert words in line


# --- onnx-permission-denied ------------------------------------------------------------------

@pytest.mark.parametrize("command", ["predict", "eval"])
def test_onnx_permission_denied(tmp_path, capsys, monkeypatch, contract_json, command):
    import onnx

    model = _stranger_onnx(tmp_path / "m.onnx", contract_json, "ok")
    if os.geteuid() == 0:  # root reads any file: refuse it the way the system would
        real = onnx.load

        def load(f, *a, **k):
            if Path(f) == model:
                raise PermissionError(errno.EACCES, "Permission denied", str(f))
            return real(f, *a, **k)

        monkeypatch.setattr(onnx, "load", load)
    else:
        model.chmod(0)
    args = {"predict": ["predict", str(model), str(tmp_path / "x.png")],
            "eval": ["eval", "--checkpoint", str(model)]}[command]
    line = fails(args, capsys)
    assert f"cannot read {model}: permission denied" in line and "chmod" in line
    assert "truncated" not in line


# --- image-format ----------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".png", ".jpg", ".spi"])
def test_image_format_predict(tmp_path, capsys, trained, suffix):
    from PIL import Image

    image = tmp_path / f"scan{suffix}"
    Image.new("F", (8, 8), 1.5).save(image, format="SPIDER")
    line = fails(["predict", str(trained), str(image)], capsys)
    assert f"{image}: not a readable image (resdist reads PNG, JPEG" in line


def test_image_format_imagefolder(tmp_path, capsys):
    from PIL import Image

    root = tmp_path / "imgs"
    classes = write_imagefolder(root, num_classes=2, n_train=2, n_val=1, size=12)
    odd = root / "train" / classes[0] / "odd.png"
    Image.new("F", (12, 12), 1.5).save(odd, format="SPIDER")
    line = fails(_folder_args(root, tmp_path / "run"), capsys, progress=True)
    assert f"{odd}: not a readable image (resdist reads PNG" in line and "skip_bad_images" in line


# --- export-target ---------------------------------------------------------------------------

@pytest.mark.parametrize("target,words", [
    ("RUN/last.pth", "ONNX files end in .onnx"),
    ("notes", "ONNX files end in .onnx"),
    ("newdir/", "names a folder, not a file"),
    ("stranger.onnx", "exists and is no ONNX file"),
])
def test_export_target(tmp_path, capsys, trained, target, words):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (tmp_path / "notes").write_text("my notes\n")
    (tmp_path / "stranger.onnx").write_text("not a model, but mine\n")
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    out = target.replace("RUN", str(run)) if target.startswith("RUN") else \
        str(tmp_path / target) + ("/" if target.endswith("/") else "")
    line = fails(["export", "--checkpoint", str(run / "last.pth"), "--out", out], capsys)
    assert words in line and "--out" in line
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "newdir").exists()


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save are deprecated
def test_export_target_ten_thousand_classes(tmp_path, capsys, trained, fmt):
    """A 10,000-class model with CJK class names (a contract of about 1.3 MB of JSON) exports,
    over an earlier export, and its contract reads back."""
    import dataclasses

    pytest.importorskip("onnx")
    from resdist.deploy.exporter import read_contract
    from resdist.engine import Checkpoint
    from resdist.models import create_model

    base = load_checkpoint(trained / "last.pth")
    names = [f"图像分类数据集的类别名称第{i:05d}号的长名字" for i in range(10_000)]
    contract = dataclasses.replace(base.contract, class_names=names)
    kw = {**base.model_kwargs, "num_classes": 10_000}
    ckpt = Checkpoint(base.model_name, kw, create_model(base.model_name, **kw).state_dict(),
                      contract=contract)
    assert len(contract.to_json()) > 1 << 20
    path = ckpt.save(tmp_path / "big.pth")
    out = tmp_path / ("big.onnx" if fmt == "onnx" else "big.pt")
    args = ["export", "--checkpoint", str(path), "--out", str(out), "--format", fmt,
            "--no-verify"]
    assert main(args) == 0, capsys.readouterr().err
    if fmt == "torchscript":  # again, over the earlier export (ONNX's exporter is slow)
        assert main(args) == 0, capsys.readouterr().err
    assert read_contract(out).class_names == names


def test_export_target_bad_contract_writes_nothing(tmp_path, capsys, trained, monkeypatch):
    """A contract that would not read back is refused before the file is written: an earlier
    good export stays as it was."""
    from resdist.data import contract as contract_module

    out = tmp_path / "m.onnx"
    assert main(["export", "--checkpoint", str(trained), "--out", str(out)]) == 0
    good = out.read_bytes()
    monkeypatch.setattr(contract_module, "MAX_JSON", 100)
    line = fails(["export", "--checkpoint", str(trained), "--out", str(out)], capsys)
    assert "characters of JSON" in line and "nothing was written" in line
    assert out.read_bytes() == good


def test_keep_foreign_files_resume_after_kill_between_best_and_last(tmp_path, capsys, trained):
    """Killed after the first best.pth and before the first last.pth: --resume starts again."""
    import shutil

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "best.pth"):
        shutil.copyfile(trained / name, run / name)
    assert load_checkpoint(run / "best.pth").epoch == 1
    assert main(_train(run, "--resume")) == 0, capsys.readouterr().err
    assert load_checkpoint(run / "last.pth").epoch == 1


def test_export_target_openvino_weights_file(tmp_path, capsys, trained):
    """OpenVINO writes MODEL.bin beside MODEL.xml: a MODEL.bin of the user's is never replaced."""
    (tmp_path / "model.bin").write_bytes(b"my own binary data")
    line = fails(["export", "--checkpoint", str(trained), "--format", "openvino", "--out",
                  str(tmp_path / "model.xml")], capsys)
    assert f"would also write {tmp_path / 'model.bin'}" in line
    assert (tmp_path / "model.bin").read_bytes() == b"my own binary data"
    assert not (tmp_path / "model.xml").exists()
