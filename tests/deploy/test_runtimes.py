"""OpenVINO, ExecuTorch and LiteRT end to end: export (fp32 and INT8) with the contract in the
file, no shortcut Add, predict and eval in each runtime equal to the checkpoint, stranger's
files refused in one line, and ``profile --runtime`` side by side.

Each runtime is an optional extra. A runtime that is not installed skips its tests, unless
``RESDIST_REQUIRE_RUNTIMES`` names it (``make test`` does, for the virtual environment that
holds it), where a missing runtime fails them: CI runs every path for real.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))

from data_writers import write_cifar, write_imagefolder  # noqa: E402

from resdist.cli import main  # noqa: E402
from resdist.deploy import evaluate_file, export, read_contract  # noqa: E402
from resdist.deploy.errors import DeployError  # noqa: E402
from resdist.deploy.formats import format_of, get_format  # noqa: E402
from resdist.engine.checkpoint import load_checkpoint  # noqa: E402

PACKAGES = {"openvino": ("openvino", "nncf"), "executorch": ("executorch", "torchao"),
            "tflite": ("ai_edge_litert", "litert_torch"), "tflm": ("tflite_micro",)}
EXTRA = {"openvino": "openvino", "executorch": "executorch", "tflite": "litert", "tflm": "tflm"}
RUNTIME = {"openvino": "openvino", "executorch": "executorch", "tflite": "litert"}
FORMATS = ["openvino", "executorch", "tflite"]


def need(fmt: str) -> None:
    """Skip unless ``fmt``'s runtime is installed; fail instead where it is required."""
    missing = [p for p in PACKAGES[fmt] if importlib.util.find_spec(p) is None]
    if not missing:
        return
    required = os.environ.get("RESDIST_REQUIRE_RUNTIMES", "").split(",")
    if EXTRA[fmt] in required:
        pytest.fail(f"{', '.join(missing)} missing although RESDIST_REQUIRE_RUNTIMES asks for "
                    f"resdist[{EXTRA[fmt]}]")
    pytest.skip(f"resdist[{EXTRA[fmt]}] is not installed here")


def _train(args: list[str]) -> None:
    assert main(["train", "--model", "plain20", "--epochs", "1", "--no-progress",
                 "--device", "cpu", "--set", "model.width_mult=0.25", "--set",
                 "train.tensorboard=false", "--set", "data.num_workers=0", *args]) == 0


@pytest.fixture(scope="module")
def cifar_run(tmp_path_factory):
    """A thin CIFAR model (plain-20 at a quarter width) trained one epoch on CIFAR pickles."""
    root = tmp_path_factory.mktemp("rt-cifar")
    write_cifar(root, per_batch=12, n_test=40)
    _train(["--data", "cifar10", "--data-dir", str(root), "--batch-size", "20",
            "--out", str(root / "run")])
    return {"data": root, "ckpt": root / "run" / "last.pth"}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """An ImageFolder model trained at 20x20 (not ImageNet's 224)."""
    root = tmp_path_factory.mktemp("rt-folder")
    write_imagefolder(root / "imgs", num_classes=3, n_train=8, n_val=4, size=30)
    _train(["--data", "imagefolder", "--data-dir", str(root / "imgs"), "--batch-size", "6",
            "--out", str(root / "run"), "--set", "data.image_size=20"])
    return {"data": root / "imgs", "ckpt": root / "run" / "last.pth"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_fp32_export_carries_the_contract_and_scores_the_checkpoint(fmt, cifar_run, tmp_path,
                                                                     capsys):
    need(fmt)
    out = tmp_path / f"m{get_format(fmt).suffixes[0]}"
    report = export(cifar_run["ckpt"], fmt, out)
    assert report.format == fmt and report.feature_adds == 0
    assert report.max_rel_error is not None and report.max_rel_error < 1e-4
    want = load_checkpoint(cifar_run["ckpt"]).contract
    assert read_contract(out) == want and format_of(out).name == fmt
    by_file = evaluate_file(out, data_dir=str(cifar_run["data"]))
    by_ckpt = evaluate_file(cifar_run["ckpt"], data_dir=str(cifar_run["data"]), device="cpu")
    assert by_file.samples == by_ckpt.samples == 40
    assert by_file.top1 == pytest.approx(by_ckpt.top1)
    assert by_file.loss == pytest.approx(by_ckpt.loss, rel=1e-4, abs=1e-5)
    assert main(["eval", "--checkpoint", str(out), "--data-dir", str(cifar_run["data"])]) == 0
    assert f"{get_format(fmt).label} fp32" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", FORMATS)
def test_imagefolder_model_predicts_and_evaluates_like_its_checkpoint(fmt, folder_run,
                                                                      tmp_path, capsys):
    need(fmt)
    out = tmp_path / f"m{get_format(fmt).suffixes[0]}"
    assert main(["export", "--checkpoint", str(folder_run["ckpt"]), "--format", fmt,
                 "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["input_contract"]["input_shape"] == [3, 20, 20]
    images = sorted((folder_run["data"] / "val").rglob("*.JPEG"))[:5]
    tops = []
    for model in (folder_run["ckpt"], out):
        assert main(["predict", str(model), *map(str, images), "--json", "--topk", "3"]) == 0
        tops.append([[t["index"] for t in r["top"]] for r in json.loads(capsys.readouterr().out)])
    assert tops[0] == tops[1]
    scores = [evaluate_file(p, data_dir=str(folder_run["data"]), device="cpu")
              for p in (folder_run["ckpt"], out)]
    assert scores[0].samples == scores[1].samples == 12
    assert scores[1].top1 == pytest.approx(scores[0].top1)


@pytest.mark.parametrize("fmt", FORMATS)
def test_int8_export_is_checked_on_real_images_and_states_its_drop(fmt, cifar_run, tmp_path,
                                                                   capsys):
    need(fmt)
    out = tmp_path / f"m-int8{get_format(fmt).suffixes[0]}"
    assert main(["export", "--checkpoint", str(cifar_run["ckpt"]), "--format", fmt,
                 "--out", str(out), "--quantize", "int8", "--calibration-images", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["precision"] == "int8" and report["feature_adds"] == 0
    assert 0.0 <= report["extra"]["int8_agreement"] <= 1.0
    assert read_contract(out) == load_checkpoint(cifar_run["ckpt"]).contract
    info = format_of(out).file_info(out)
    assert info.precision == "int8" and info.data == "cifar10"
    score = evaluate_file(out, data_dir=str(cifar_run["data"]))  # data set from the file
    assert score.samples == 40 and "int8" in score.model_name


@pytest.mark.parametrize("fmt", FORMATS)
def test_resnet_keeps_its_shortcut_adds(fmt, tmp_path):
    need(fmt)
    from resdist.models import create_model
    from resdist.models.fold import calibrate_bn

    model = create_model("resnet20", num_classes=4, in_chans=3, width_mult=0.25)
    calibrate_bn(model, input_shape=(3, 16, 16))
    report = export(model.eval(), fmt, tmp_path / f"r{get_format(fmt).suffixes[0]}",
                    input_shape=(3, 16, 16))
    assert report.feature_adds == model.count_shortcut_adds() == 9
    assert report.max_rel_error < 1e-4


def test_litert_int8_resnet_quantises_every_shortcut_add(tmp_path):
    """Each identity block's Add is INT8: a block calls its one nn.ReLU twice, and LiteRT's
    quantiser skipped such Adds (leaving them float, with DEQUANTIZE/QUANTIZE around them) on
    the non-strict export graph."""
    need("tflite")
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    from resdist.models import create_model
    from resdist.models.fold import calibrate_bn

    model = create_model("resnet20", num_classes=4, in_chans=3, width_mult=0.25)
    calibrate_bn(model, input_shape=(3, 16, 16))
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((8, 3, 16, 16)).astype(np.float32) for _ in range(2)]
    out = tmp_path / "r-int8.tflite"
    report = export(model.eval(), "tflite", out, input_shape=(3, 16, 16), quantize="int8",
                    calibration=lambda: iter(batches), check_images=batches[0])
    assert report.feature_adds == 9
    interpreter = Interpreter(model_path=str(out))
    floats = [t["name"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    assert floats == []


@pytest.mark.parametrize("fmt", FORMATS)
def test_strangers_and_damaged_files_are_refused_in_one_line(fmt, cifar_run, tmp_path, capsys):
    need(fmt)
    suffix = get_format(fmt).suffixes[0]
    junk = tmp_path / f"junk{suffix}"
    junk.write_bytes(b"\x00" * 64)
    good = tmp_path / f"good{suffix}"
    export(cifar_run["ckpt"], fmt, good, verify=False)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    for path in (junk, cut):
        for args in (["predict", str(path), str(image)],
                     ["eval", "--checkpoint", str(path), "--data-dir", str(cifar_run["data"])]):
            assert main(args) == 2
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and "export it again" in err, err
    bare = tmp_path / f"bare{suffix}"
    from resdist.models import create_model

    export(create_model("plain20", num_classes=10, width_mult=0.25).eval(), fmt, bare,
           input_shape=(3, 32, 32), verify=False)
    assert read_contract(bare) is None
    assert main(["predict", str(bare), str(image)]) == 2
    assert "records no input contract" in capsys.readouterr().err


@pytest.mark.parametrize("error", ["oserror", "runtimeerror"])
def test_a_failed_openvino_write_keeps_the_previous_pair(cifar_run, tmp_path, monkeypatch,
                                                        error):
    """The .xml/.bin pair is written beside the target and moved in: a full disk while saving
    leaves the previous export whole (the other formats write through one atomic file). OpenVINO
    itself reports a full disk as a RuntimeError naming no cause: still one line."""
    need("openvino")
    import errno

    import openvino

    out = tmp_path / "m.xml"
    export(cifar_run["ckpt"], "openvino", out, verify=False)
    before = (out.read_bytes(), out.with_suffix(".bin").read_bytes())

    def full_disk(*args, **kwargs):
        if error == "oserror":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1:\n"
                           "basic_ios::clear: iostream error")

    monkeypatch.setattr(openvino, "save_model", full_disk)
    words = "no space left" if error == "oserror" else "check that the disk has room"
    with pytest.raises(DeployError, match=f"{words}.*previous file is kept"):
        export(cifar_run["ckpt"], "openvino", out, verify=False)
    assert (out.read_bytes(), out.with_suffix(".bin").read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.xml"]


@pytest.mark.parametrize(("runtime", "int8"), [("onnxruntime", True), ("openvino", True),
                                               ("litert", False), ("executorch", False)])
def test_profile_times_resnet_and_plain_on_the_runtime(runtime, int8, tmp_path):
    """ResNet and plain side by side on the runtime at every setting (INT8 too where the
    quantiser is quick; the other runtimes' INT8 export is tested above); the report and its
    JSON carry them (thin quarter-width nets at 16x16 keep it quick)."""
    if runtime != "onnxruntime":
        need({"litert": "tflite"}.get(runtime, runtime))
    from resdist.deploy import profile_models, write_profile_report
    from resdist.models import create_model

    models = [(name, create_model(name, num_classes=4, width_mult=0.25))
              for name in ("resnet20", "plain20")]
    result = profile_models(models, input_shape=(3, 16, 16), batch_sizes=(1, 2), threads=(1,),
                            runs=2, warmup=1, memory_check=False, int8=int8,
                            runtimes=[runtime], onnx_dir=tmp_path / "onnx")
    out = tmp_path / "prof"
    text = write_profile_report(result, out)
    assert "resnet20 / plain20" in (out / "profile_runtimes.md").read_text() and text
    saved = json.loads((out / "profile.json").read_text())["runtimes"]
    got = {(r["runtime"], r["model"], r["precision"], r["batch"]) for r in saved["latency"]}
    precisions = ("fp32", "int8") if int8 else ("fp32",)
    assert got == {(runtime, m, p, b) for m in ("resnet20", "plain20")
                   for p in precisions for b in (1, 2)}
    assert all(r["median_ms"] > 0 and r["runs"] == 2 for r in saved["latency"])
    if runtime == "executorch":  # its own memory plan: the portable plan shows the shortcut
        plans = {(m["model"], m["covers"].split(":")[0]): m["planned_bytes"]
                 for m in saved["memory"] if m["precision"] == "fp32"}
        portable = "memory plan of the portable-kernel program"
        assert plans[("resnet20", portable)] > plans[("plain20", portable)]


def test_tflite_micro_finds_the_smallest_arena_and_the_shortcuts_cost_arena(tmp_path):
    """ResNet-8 and plain-8 (MLPerf Tiny's layout) in INT8 through LiteRT, profiled: TFLite
    Micro's smallest arena is in the memory table, the ResNet's larger; the arena found runs
    and 16 bytes less does not; a file that is no model is one line."""
    need("tflite")
    need("tflm")
    from tflite_micro.python.tflite_micro import runtime as tflm_runtime

    from resdist.deploy import profile_models
    from resdist.deploy.formats import tflm
    from resdist.models import create_model

    models = [(name, create_model(name, num_classes=10)) for name in ("resnet8", "plain8")]
    result = profile_models(models, input_shape=(3, 32, 32), batch_sizes=(1,), threads=(1,),
                            runs=1, warmup=0, memory_check=False, int8=True,
                            runtimes=["litert"], onnx_dir=tmp_path / "onnx")
    arenas = {m.model: m.planned_bytes for m in result.runtimes.memory
              if m.covers.startswith("TFLite Micro")}
    assert arenas["resnet8"] > arenas["plain8"] > 0
    written = sorted((tmp_path / "onnx").rglob("plain8*int8*.tflite"))
    assert written, list((tmp_path / "onnx").rglob("*"))
    found = tflm.tflm_arena(written[0])
    assert found.arena_bytes == arenas["plain8"] and found.model_bytes > 0
    with tflm._native_stderr_quiet():
        assert tflm._runs(tflm_runtime, written[0], found.arena_bytes)
        assert not tflm._runs(tflm_runtime, written[0], found.arena_bytes - 16)
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(DeployError, match="not a .tflite model") as e:
        tflm.tflm_arena(junk)
    assert len(str(e.value).splitlines()) == 1
    damaged = tmp_path / "damaged.tflite"  # the right identifier, nothing a model needs
    damaged.write_bytes(written[0].read_bytes()[:4096])
    with pytest.raises(DeployError, match="TFLite Micro cannot run") as e:
        tflm.tflm_arena(damaged)
    assert len(str(e.value).splitlines()) == 1


def _snippet(runtime_heading: str) -> str:
    import re

    text = (Path(__file__).resolve().parents[2] / "docs" / "deploy.md").read_text()
    section = text.split(f"### {runtime_heading} without resdist", 1)[1].split("\n#", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.mark.parametrize(("fmt", "heading"), [("openvino", "OpenVINO"),
                                              ("executorch", "ExecuTorch"),
                                              ("tflite", "LiteRT")])
def test_docs_runtime_example_prints_what_predict_prints(fmt, heading, folder_run, tmp_path,
                                                          capsys, monkeypatch):
    """The docs' dozen lines in the runtime's own API follow the contract: same class as
    resdist predict, on an ImageFolder model at 20x20 and a picture of another size."""
    need(fmt)
    from PIL import Image

    suffix = get_format(fmt).suffixes[0]
    export(folder_run["ckpt"], fmt, tmp_path / f"plain56{suffix}", verify=False)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)).save(
        tmp_path / "shoe.png")
    # in this process, not a child: a process that has loaded ExecuTorch died when a test
    # spawned a child process (twice in CI, cause not found)
    import contextlib
    import io

    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(_snippet(heading), f"docs/deploy.md ({heading})", "exec"),
             {"__name__": "__main__"})
    assert main(["predict", str(tmp_path / f"plain56{suffix}"), str(tmp_path / "shoe.png"),
                 "--topk", "1", "--json"]) == 0
    best = json.loads(capsys.readouterr().out)[0]["top"][0]["class"]
    assert printed.getvalue().strip().splitlines()[-1] == best
