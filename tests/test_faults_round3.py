"""One test per row of the "Round 3" section of docs/faults.md: ImageFolder edge cases, odd
files given to predict/eval/export/train, signals, and hostile environments. Each fault ends in
one line that says what to do (exit status 2; 130 for Ctrl-C, 143 for SIGTERM) and loses or
mixes nothing."""

import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from resdist.cli import main
from resdist.data.images import open_image
from resdist.engine import load_checkpoint
from resdist.engine import trainer as trainer_module

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from data_writers import write_imagefolder  # noqa: E402

from test_faults import TINY, _epochs, _imagefolder_args, _train, fails, ok  # noqa: E402

ROWS_DOC = Path(__file__).resolve().parents[1] / "docs" / "faults.md"


def _round3_rows() -> list[str]:
    text = ROWS_DOC.read_text()
    section = text[text.index("## Round 3 (issue 34)"):]
    section = section.split("\n## ", 1)[0]  # up to the next section (issue 35's rows)
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section, flags=re.M)


def test_every_round3_row_has_a_test():
    rows = _round3_rows()
    text = Path(__file__).read_text()
    assert len(rows) >= 10
    for row in rows:
        assert f"def test_{row.replace('-', '_')}" in text, row


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained3") / "run"
    assert main(_train(run)) == 0
    return run


def _folder(tmp_path: Path, n_train: int = 4) -> tuple[Path, list[str]]:
    root = tmp_path / "imgs"
    return root, write_imagefolder(root, num_classes=2, n_train=n_train, n_val=2, size=20)


def _png(path: Path, pixels: np.ndarray, **kw) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, **kw)
    return path


def _classes_of(run: Path) -> list[str]:
    return load_checkpoint(run / "last.pth").require_contract().class_names


# --- ImageFolder -----------------------------------------------------------------------------

def test_empty_class_folder(tmp_path, capsys):
    root, classes = _folder(tmp_path)
    (root / "train" / "zebra").mkdir()
    (root / "val" / "zebra").mkdir()
    (root / "train" / "zebra" / "notes.txt").write_text("no images here")
    line = fails(_imagefolder_args(root, tmp_path / "a"), capsys)
    assert str(root / "train" / "zebra") in line and "class folder without image files" in line
    assert "add images or remove the folder" in line
    assert not (tmp_path / "a").exists()


def test_hidden_and_non_image_files(tmp_path, capsys):
    root, classes = _folder(tmp_path)
    cat = root / "train" / classes[0]
    (cat / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (cat / f"._{classes[0]}_1.JPEG").write_bytes(b"\0\5\26\7 AppleDouble")  # macOS twin
    (cat / "labels.csv").write_text("file,label\n")
    (cat / ".thumbs").mkdir()
    _png(cat / ".thumbs" / "t.png", np.zeros((4, 4), np.uint8))
    for split in ("train", "val"):  # a hidden folder is no class
        _png(root / split / ".ipynb_checkpoints" / "x.png", np.zeros((4, 4), np.uint8))
    ok(_imagefolder_args(root, tmp_path / "a"), capsys)
    assert _classes_of(tmp_path / "a") == classes
    ckpt = load_checkpoint(tmp_path / "a" / "last.pth")
    assert ckpt.metrics["test_samples"] == 4  # 2 classes x 2 val images, nothing else


@pytest.mark.parametrize("name, words", [
    ("new\nline", "holds control or formatting characters"),
    ("x" * 255, "is longer than 200 characters"),
    (os.fsdecode(b"caf\xe9"), "is not valid UTF-8"),
])
def test_odd_class_names(tmp_path, capsys, name, words):
    root, classes = _folder(tmp_path)
    for split in ("train", "val"):
        for i in range(2):
            _png(root / split / name / f"{i}.png", np.full((8, 8, 3), 60 * i, np.uint8))
    line = fails(_imagefolder_args(root, tmp_path / "a"), capsys)
    assert words in line and "rename the folder" in line and str(root / "train") in line
    assert not (tmp_path / "a").exists()


def test_odd_class_names_that_are_fine(tmp_path, capsys):
    """Emoji and other non-ASCII names are class names like any other, up to the prediction."""
    root, classes = _folder(tmp_path)
    name = "chat 😀 ünïcode"
    for split in ("train", "val"):
        for i in range(2):
            _png(root / split / name / f"{i}.png", np.full((8, 8, 3), 60 * i, np.uint8))
    ok(_imagefolder_args(root, tmp_path / "a"), capsys)
    assert _classes_of(tmp_path / "a") == sorted([*classes, name])
    out, _ = ok(["predict", str(tmp_path / "a"), str(root / "val" / name / "0.png"), "--json",
                 "--topk", "3"], capsys)
    assert name in [t["class"] for t in json.loads(out)[0]["top"]]


@pytest.mark.slow
def test_many_classes(tmp_path, capsys):
    """10,000 class folders: scanned, trained (a few images), recorded in the contract and
    predicted by name."""
    root = tmp_path / "imgs"
    first = _png(tmp_path / "one.png", np.full((8, 8, 3), 90, np.uint8))
    names = [f"c{i:05d}" for i in range(10_000)]
    for split in ("train", "val"):
        for n in names:
            (root / split / n).mkdir(parents=True)
            os.link(first, root / split / n / "a.png")
    args = _imagefolder_args(root, tmp_path / "a", "--set", "data.limit_train=64",
                             "--set", "data.limit_test=64", "--set", "data.image_size=8")
    ok(args, capsys)
    assert _classes_of(tmp_path / "a") == names
    out, _ = ok(["predict", str(tmp_path / "a"), str(first), "--json"], capsys)
    assert json.loads(out)[0]["top"][0]["class"] in names


def test_mixed_image_modes(tmp_path, capsys):
    from PIL import Image

    root, classes = _folder(tmp_path)
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)
    cat, dog = root / "train" / classes[0], root / "train" / classes[1]
    Image.fromarray(rgb).convert("CMYK").save(cat / "cmyk.jpg")
    Image.fromarray(rgb).convert("P").save(cat / "palette.png", transparency=0)
    _png(dog / "grey16.png", rng.integers(0, 65536, (20, 20)).astype(np.uint16))
    _png(dog / "rgba.png", np.dstack([rgb, np.full((20, 20), 128, np.uint8)]))
    frames = [Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8))
              for _ in range(3)]
    frames[0].save(dog / "anim.gif", save_all=True, append_images=frames[1:])
    ok(_imagefolder_args(root, tmp_path / "a"), capsys)
    # an animated GIF is read as its first frame, the same in training and predict
    first = np.asarray(Image.open(dog / "anim.gif").convert("RGB"))
    assert np.array_equal(np.asarray(open_image(dog / "anim.gif", "RGB")), first)
    assert np.asarray(open_image(dog / "rgba.png", "RGB")).shape == (20, 20, 3)


def _cut_jpeg(path: Path) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    data = buf.getvalue()
    path.write_bytes(data[: len(data) // 2])
    with Image.open(path) as im:
        im.verify()  # PIL's verify() passes a JPEG cut in half: the scan must decode it
    return path


def test_truncated_image(tmp_path, capsys):
    root, classes = _folder(tmp_path)
    cut = _cut_jpeg(root / "train" / classes[0] / "cut.jpg")
    (root / "train" / classes[1] / "padded.jpg").write_bytes(
        (root / "train" / classes[1] / f"{classes[1]}_0.JPEG").read_bytes() + b"\0" * 64)
    line = fails(_imagefolder_args(root, tmp_path / "a"), capsys)
    assert str(cut) in line and "truncated" in line and "skip_bad_images" in line
    assert not (tmp_path / "a").exists()
    _, err = ok(_imagefolder_args(root, tmp_path / "b", "--set", "data.skip_bad_images=true"),
                capsys)
    assert "left out 1 unreadable image files" in err and "cut.jpg" in err


@pytest.mark.parametrize("how", ["removed", "unreadable"])
def test_image_removed_while_training(tmp_path, capsys, monkeypatch, how):
    root, classes = _folder(tmp_path, n_train=8)
    victim = root / "train" / classes[1] / f"{classes[1]}_3.JPEG"
    real_epoch = trainer_module.Trainer.train_epoch

    def epoch_then_remove(self, epoch):
        if epoch == 1:  # after epoch 1's checkpoint, before epoch 2 reads its images
            if how == "removed":
                victim.unlink()
            else:
                from PIL import Image

                real_open = Image.open

                def refuse(fp, *a, **k):
                    if str(fp) == str(victim):
                        raise PermissionError(13, "Permission denied", str(fp))
                    return real_open(fp, *a, **k)

                monkeypatch.setattr(Image, "open", refuse)
        return real_epoch(self, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", epoch_then_remove)
    run = tmp_path / "run"
    line = fails(_imagefolder_args(root, run, "--epochs", "3"), capsys)
    assert str(victim) in line
    assert ("the file is gone" if how == "removed" else "permission denied") in line
    assert f"{run / 'last.pth'} (epoch 1) is kept" in line and "continue with --resume" in line
    assert load_checkpoint(run / "last.pth").epoch == 1 and _epochs(run) == [1]
    assert not (run / ".lock").exists() and not list(run.glob(".*.tmp"))
    monkeypatch.undo()
    ok(_imagefolder_args(root, run, "--epochs", "3", "--resume"), capsys)  # scanned again
    assert _epochs(run) == [1, 2, 3]


# --- odd files given as inputs ---------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    """A named pipe with a writer thread: were it ever opened for reading, the reader would
    get end-of-file (not block); the writer is released at the end either way."""
    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    writer = threading.Thread(target=lambda: open(path, "wb").close(), daemon=True)
    writer.start()
    yield path
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    os.close(fd)
    writer.join(5)


def test_special_file_input(tmp_path, capsys, trained, fifo):
    image = _png(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    for special in (fifo, Path("/dev/zero")):
        line = fails(["predict", str(trained), str(special)], capsys)
        assert "not a regular file or folder" in line and "pass image files" in line
        for args in (["predict", str(special), str(image)], ["eval", "--checkpoint", str(special)],
                     ["export", "--checkpoint", str(special), "--out", str(tmp_path / "m.onnx")]):
            line = fails(args, capsys)
            assert f"{special} is not a regular file (a pipe or a device)" in line, args
        line = fails(["train", "--config", str(special), "--dry-run"], capsys)
        assert "not a regular file" in line and "pass a YAML file" in line
    link = tmp_path / "zero.onnx"
    link.symlink_to("/dev/zero")
    assert "not a regular file" in fails(["predict", str(link), str(image)], capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_directory_named_like_an_image(tmp_path, capsys, trained):
    folder = tmp_path / "photo.png"  # a folder: searched for images, like any folder
    _png(folder / "inside.png", np.zeros((8, 8), np.uint8))
    out, _ = ok(["predict", str(trained), str(folder), "--json"], capsys)
    assert [r["file"] for r in json.loads(out)] == [str(folder / "inside.png")]
    empty = tmp_path / "empty.jpg"
    empty.mkdir()
    line = fails(["predict", str(trained), str(empty)], capsys)
    assert str(empty) in line and "no image files" in line


def test_extreme_image_shapes(tmp_path, capsys, trained):
    files = [_png(tmp_path / "1x1.png", np.full((1, 1), 200, np.uint8)),
             _png(tmp_path / "60000x1.png", np.full((1, 60000), 100, np.uint8)),
             _png(tmp_path / "1x60000.png", np.full((60000, 1), 50, np.uint8))]
    out, _ = ok(["predict", str(trained), *map(str, files), "--json"], capsys)
    assert len(json.loads(out)) == 3
    root, classes = _folder(tmp_path)
    _png(root / "train" / classes[0] / "wide.png", np.full((1, 60000, 3), 7, np.uint8))
    _png(root / "train" / classes[1] / "dot.png", np.full((1, 1, 3), 7, np.uint8))
    ok(_imagefolder_args(root, tmp_path / "a"), capsys)


def _exif_rotated(path: Path, pixels: np.ndarray) -> Path:
    """A JPEG of ``pixels`` whose EXIF orientation (6) says: turn it 90 degrees clockwise."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(pixels).save(path, quality=95, exif=exif)
    return path


def test_exif_orientation(tmp_path, capsys, trained):
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = _exif_rotated(tmp_path / "photo.jpg", rng.integers(0, 256, (8, 12), np.uint8))
    with Image.open(photo) as im:
        stored = np.asarray(im.convert("L"))
    upright = np.asarray(open_image(photo, "L"))
    assert upright.shape == (12, 8)  # as viewers show it
    assert np.array_equal(upright, np.rot90(stored, k=-1))
    same = _png(tmp_path / "upright.png", upright)
    by_exif, _ = ok(["predict", str(trained), str(photo), "--json"], capsys)
    by_pixels, _ = ok(["predict", str(trained), str(same), "--json"], capsys)
    assert json.loads(by_exif)[0]["top"] == json.loads(by_pixels)[0]["top"]
    # training reads it through the same function: the ImageFolder sample is upright too
    from resdist.data.imagefolder import read_imagefolder

    root, classes = _folder(tmp_path)
    _exif_rotated(root / "train" / classes[0] / "photo.jpg",
                  rng.integers(0, 256, (8, 12, 3), np.uint8))
    train, _ = read_imagefolder(root, image_size=8, augment=False)
    index = [p for p, _ in train.samples].index(str(root / "train" / classes[0] / "photo.jpg"))
    assert train.loader(train.samples[index][0]).size == (8, 12)  # width 8, height 12


# --- signals ---------------------------------------------------------------------------------

def _kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)


@pytest.fixture
def signals():
    """Python's own signal handling in this process (a test runner may have changed it)."""
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        pytest.skip("SIGTERM is handled by the test runner")
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGTERM, 143, "terminated"),
                                             (signal.SIGINT, 130, "interrupted")])
def test_signal_during_checkpoint_write(tmp_path, capsys, monkeypatch, signals, sig, code,
                                        word):
    """The signal arrives while epoch 2's checkpoint is half written: the temporary goes, the
    previous last.pth stays, the lock is released, and --resume finishes the run."""
    real = torch.save

    def save(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch") == 2:
            f.write(b"half a checkpoint")
            _kill_self(sig)
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    line = fails(_train(run, epochs=3), capsys, code=code)
    assert line == f"{word}; {run / 'last.pth'} is kept; continue with --resume"
    assert load_checkpoint(run / "last.pth").epoch == 1 and _epochs(run) == [1]
    assert not list(run.glob(".*.tmp")) and not (run / ".lock").exists()
    monkeypatch.undo()
    ok(_train(run, "--resume", epochs=3), capsys)
    assert _epochs(run) == [1, 2, 3]


def test_signal_before_the_first_checkpoint(tmp_path, capsys, monkeypatch, signals):
    monkeypatch.setattr(trainer_module.Trainer, "train_epoch",
                        lambda self, epoch: _kill_self(signal.SIGTERM))
    line = fails(_train(tmp_path / "run"), capsys, code=143)
    assert "nothing was kept" in line and "train again" in line
    assert not (tmp_path / "run").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # main() restores it


def test_signal_during_int8_calibration(tmp_path, capsys, monkeypatch, signals, trained):
    pytest.importorskip("onnxruntime.quantization")
    from resdist.deploy.quantize import checkpoint as quantize_checkpoint

    out = tmp_path / "m-int8.onnx"
    args = ["export", "--checkpoint", str(trained), "--out", str(out), "--quantize", "int8",
            "--calibration-images", "32"]
    ok(args, capsys)
    before = out.read_bytes()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    monkeypatch.setattr(tempfile, "tempdir", None)
    real = quantize_checkpoint.calibration_batches

    class Batches(list):
        def __iter__(self):
            for i, batch in enumerate(list.__iter__(self)):
                if i == 1:
                    _kill_self(signal.SIGTERM)
                yield batch

    monkeypatch.setattr(quantize_checkpoint, "calibration_batches",
                        lambda *a, **k: Batches(real(*a, **k)))
    line = fails([*args, "--calibration-images", "96"], capsys, code=143)  # 2 batches
    assert line == f"terminated; {out}: the previous file is kept; export again"
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-int8.onnx", "tmp"]
    assert not list(scratch.iterdir())  # the fp32 and calibration temporaries are gone


def test_signal_during_reproduce(tmp_path, capsys, monkeypatch, signals, tiny_run):
    from resdist.experiments import suites

    monkeypatch.setattr(suites, "suite_settings", lambda name: tiny_run)
    real, calls = trainer_module.Trainer.train_epoch, []

    def second_run_killed(self, epoch):
        calls.append(self.run_dir)
        if len({*calls}) == 2:  # the first student, in its first epoch
            _kill_self(signal.SIGTERM)
        return real(self, epoch)

    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", second_run_killed)
    args = ["reproduce", "fashion-mnist", "--seeds", "0", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "res")]
    line = fails(args, capsys, code=143)
    assert line.startswith("terminated; the finished runs and their records in")
    assert "run the same command again" in line
    records = tmp_path / "res" / "runs" / "fashion-mnist" / "seed0"
    assert [p.name for p in records.glob("*.json")] == ["resnet20-ce.json"]
    assert not list(tmp_path.rglob(".*.tmp")) and not list(tmp_path.rglob(".lock"))
    monkeypatch.setattr(trainer_module.Trainer, "train_epoch", real)
    out, _ = ok(args, capsys)
    assert "recorded run reused" in out
    assert (tmp_path / "res" / "accuracy.json").exists()


# --- environment -----------------------------------------------------------------------------

def test_home_unset(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HOME", raising=False)
    ok(_train(tmp_path / "run"), capsys)
    image = _png(tmp_path / "x.png", np.zeros((8, 8), np.uint8))
    ok(["predict", str(tmp_path / "run"), str(image)], capsys)


def _read_only_folder(path: Path) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        return True
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def test_read_only_working_folder(tmp_path, capsys, monkeypatch, trained):
    ro = tmp_path / "ro"
    if not _read_only_folder(ro):
        pytest.skip("needs root and tmpfs mounts")
    try:
        monkeypatch.chdir(ro)
        line = fails(["train", *TINY, "--epochs", "1"], capsys)  # the default --out, runs/..., lies in the working folder
        assert "cannot create the run directory" in line and "choose another --out" in line
        line = fails(["export", "--checkpoint", str(trained), "--out", "m.onnx"], capsys)
        assert "cannot write" in line and "no file was written" in line
        ok(_train(tmp_path / "elsewhere"), capsys)  # an --out elsewhere works
    finally:
        monkeypatch.chdir(tmp_path)
        if os.geteuid() == 0:
            subprocess.run(["umount", str(ro)], check=False)
        else:
            ro.chmod(0o755)


def test_tmpdir_missing(tmp_path, capsys, monkeypatch, trained):
    pytest.importorskip("onnxruntime.quantization")
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no" / "such" / "folder"))
    monkeypatch.setattr(tempfile, "tempdir", None)  # Python falls back to /tmp, /var/tmp, cwd
    ok(["export", "--checkpoint", str(trained), "--out", str(tmp_path / "m-int8.onnx"),
        "--quantize", "int8", "--calibration-images", "32"], capsys)
    ok(_train(tmp_path / "run"), capsys)


@pytest.mark.slow
def test_lang_c_non_ascii_paths(tmp_path):
    """LANG=C without Python's UTF-8 mode: paths arrive as undecodable bytes, stdout is ASCII.
    Train, export, predict and profile into a non-ASCII folder all work."""
    pytest.importorskip("onnxruntime")
    where = tmp_path / "données" / "é"
    where.mkdir(parents=True)
    _png(where / "bïld.png", np.zeros((8, 8), np.uint8))
    script = tmp_path / "steps.py"  # the names come in on the command line, as typed
    script.write_text(
        "import sys\nfrom resdist.cli import main\n"
        "run, model, image, report = sys.argv[1:]\n"
        f"tiny = {_train(Path('RUN'))!r}\n"
        "steps = [[run if a == 'RUN' else a for a in tiny],\n"
        "         ['export', '--checkpoint', run, '--out', model, '--opset', '17'],\n"
        "         ['predict', model, image],\n"
        "         ['profile', run, '--no-latency', '--out', report]]\n"
        "sys.exit(max(main(s) for s in steps))\n")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LC_", "LANG", "PYTHONUTF", "PYTHONIOENCODING"))}
    env.update(LANG="C", LC_ALL="C")
    done = subprocess.run([sys.executable, "-X", "utf8=0", str(script), "rün", "mödel.onnx",
                           "bïld.png", "pröfile"], cwd=where, env=env, capture_output=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]
    assert b"Traceback" not in done.stderr
    assert (where / "mödel.onnx").stat().st_size > 0
    assert "rün" in (where / "pröfile" / "profile.md").read_text(encoding="utf-8")
