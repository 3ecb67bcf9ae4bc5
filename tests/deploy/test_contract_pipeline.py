"""One contract, one evaluation pipeline: an ImageFolder model trained with its own
preprocessing scores the same top-1 as a checkpoint and in every export (fp32, INT8, baked
uint8, TorchScript, safetensors), from anywhere, with only the split it scores; a checkpoint
saved from Python works like a trained one; ``profile --int8`` calibrates NAME=FILE teachers."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from resdist.cli import main

sys.path.insert(0, str(Path(__file__).parents[1] / "data"))
from data_writers import write_imagefolder  # noqa: E402

pytest.importorskip("onnxruntime")

MEAN, STD = [0.3, 0.4, 0.5], [0.2, 0.25, 0.3]
PREP = ["--set", "data.image_size=24", "--set", "data.crop_pct=0.8", "--set",
        "data.interpolation=bicubic", "--set", f"data.mean={MEAN}", "--set", f"data.std={STD}"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    """A plain20 trained for an epoch on a 3-class ImageFolder at 24 px (resize 30, bicubic,
    own mean/std), and its exports."""
    from resdist.deploy import export
    from resdist.deploy.quantize import quantize_checkpoint

    root = tmp_path_factory.mktemp("pipeline")
    data = root / "mydata"
    write_imagefolder(data, num_classes=3, n_train=6, n_val=5, size=36)
    out = root / "run"
    args = ["train", "--data", "imagefolder", "--data-dir", str(data), "--model", "plain20",
            "--stem", "cifar", "--epochs", "1", "--batch-size", "6", "--out", str(out),
            "--no-progress", "--lr", "0.05", *PREP, "--set", "model.width_mult=0.25", "--set",
            "data.num_workers=0", "--set", "train.tensorboard=false", "--set",
            "train.device=cpu"]
    assert main(args) == 0
    ckpt = out / "last.pth"
    files = {"ckpt": ckpt, "data": data, "root": root}
    for name, fmt, kw in (("fp32.onnx", "onnx", {}), ("model.pt", "torchscript", {}),
                          ("baked-uint8.onnx", "onnx", {"preprocess": True,
                                                        "input_dtype": "uint8"}),
                          ("model.safetensors", "safetensors", {})):
        export(ckpt, fmt, root / name, opset=17, **kw)
        files[name] = root / name
    quantize_checkpoint(ckpt, root / "int8.onnx", calibration_images=12, opset=17)
    files["int8.onnx"] = root / "int8.onnx"
    return files


def _score(path: Path, **kw):
    from resdist.deploy import evaluate_file

    return evaluate_file(path, device="cpu", trust_torchscript=True, **kw)


def test_every_export_scores_the_checkpoints_top1_with_its_preprocessing(run, tmp_path,
                                                                        monkeypatch):
    ref = _score(run["ckpt"])
    assert ref.samples == 15 and ref.data_name == "imagefolder"
    line = ref.preprocessing
    assert "shorter side resized to 30 (bicubic), centre crop 24x24" in line
    assert f"mean {MEAN}, std {STD}" in line and str(run["data"]) in line
    # from another folder, with train/ gone: the contract's folder and val/ alone are used
    monkeypatch.chdir(tmp_path)
    hidden = run["root"] / "train-hidden"
    shutil.move(str(run["data"] / "train"), hidden)
    try:
        for name in ("fp32.onnx", "model.pt", "baked-uint8.onnx", "model.safetensors",
                     "int8.onnx"):
            score = _score(run[name])
            assert score.samples == ref.samples and score.preprocessing == line, name
            if name == "int8.onnx":  # INT8 arithmetic may move an image across a boundary
                assert abs(score.top1 - ref.top1) <= 100 / ref.samples + 1e-9, name
            else:
                assert score.top1 == pytest.approx(ref.top1), name
                assert score.loss == pytest.approx(ref.loss, rel=1e-3, abs=1e-4), name
        assert _score(run["ckpt"]).top1 == pytest.approx(ref.top1)
    finally:
        shutil.move(str(hidden), run["data"] / "train")


def test_eval_prints_the_preprocessing_and_a_missing_folder_names_the_flag(run, tmp_path,
                                                                          capsys):
    assert main(["eval", "--checkpoint", str(run["fp32.onnx"])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("fp32.onnx (ONNX fp32) on imagefolder test (15 images)")
    assert out[1].startswith("preprocessing: imagefolder test images from ")
    assert main(["eval", "--checkpoint", str(run["fp32.onnx"]), "--data-dir",
                 str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-dir" in err[0] and "val/" in err[0]


def test_contract_fields_that_cannot_be_honoured_are_refused(run, capsys):
    # a 24x24 RGB ImageFolder model scored on CIFAR-10 (32x32, never resized)
    assert main(["eval", "--checkpoint", str(run["fp32.onnx"]), "--data", "cifar10"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cifar10 images are 3x32x32" in err[0]


def test_a_checkpoint_saved_from_python_works_like_a_trained_one(run, tmp_path, capsys):
    from resdist.data.contract import contract_for_data
    from resdist.deploy import evaluate_file
    from resdist.engine import Checkpoint, load_checkpoint
    from resdist.errors import ResdistError

    trained = load_checkpoint(run["ckpt"])
    model = trained.build_model()
    contract = contract_for_data("imagefolder", image_size=24, resize=30,
                                 interpolation="bicubic", mean=MEAN, std=STD,
                                 class_names=trained.contract.class_names)
    lib = tmp_path / "lib.pth"  # no config, no recorded folder: the user's own loop
    Checkpoint("plain20", dict(trained.model_kwargs), model.state_dict(),
               contract=contract).save(lib)
    ref = _score(run["ckpt"])
    assert _score(lib, data_dir=str(run["data"])).top1 == pytest.approx(ref.top1)
    with pytest.raises(ResdistError):  # the default folder does not exist here
        evaluate_file(lib, data_dir=str(tmp_path / "nowhere"))
    # export (fp32 and INT8 calibrated on the contract's data set), predict, profile
    assert main(["export", "--checkpoint", str(lib), "--out", str(tmp_path / "lib.onnx"),
                 "--opset", "17"]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(lib), "--out", str(tmp_path / "lib8.onnx"),
                 "--opset", "17", "--quantize", "int8", "--data-dir", str(run["data"]),
                 "--calibration-images", "12"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calibration"].startswith("imagefolder training split")
    assert _score(tmp_path / "lib.onnx", data_dir=str(run["data"])).top1 == \
        pytest.approx(ref.top1)
    image = next((run["data"] / "val").rglob("*.JPEG"))
    assert main(["predict", str(lib), str(image), "--json"]) == 0
    by_lib = capsys.readouterr().out
    assert main(["predict", str(run["ckpt"]), str(image), "--json"]) == 0
    assert capsys.readouterr().out == by_lib
    assert main(["profile", str(lib), "--runs", "2", "--batch-sizes", "1", "--threads", "1",
                 "--no-latency"]) == 0
    assert "plain20 (lib.pth)" in capsys.readouterr().out


def test_profile_int8_calibrates_name_file_teachers(run, tmp_path, capsys):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    from resdist.models import create_model

    teacher = create_model("resnet20", num_classes=3)
    save_file(teacher.state_dict(), str(tmp_path / "teacher.safetensors"))
    torch.save(teacher.state_dict(), tmp_path / "teacher.pth")
    common = ["--input-size", "24", "--num-classes", "3", "--runs", "2", "--batch-sizes", "1",
              "--threads", "1", "--int8"]
    # the teacher as the issue gave it (a .safetensors state dict), calibrated on the data named
    spec = f"resnet20={tmp_path / 'teacher.safetensors'}"
    assert main(["profile", spec, *common, "--calibration-data", "imagefolder", "--data-dir",
                 str(run["data"])]) == 0, capsys.readouterr().err
    assert "imagefolder training images" in capsys.readouterr().err
    # a .pth state dict without a data set named: Gaussian images, and the report says so
    assert main(["profile", f"resnet20={tmp_path / 'teacher.pth'}", *common]) == 0
    assert "Gaussian images (no data set named)" in capsys.readouterr().err


def test_predict_takes_the_safetensors_export_like_its_checkpoint(run, capsys):
    from resdist.deploy.formats.safetensors import load_deployed

    image = next((run["data"] / "val").rglob("*.JPEG"))
    assert main(["predict", str(run["model.safetensors"]), str(image), "--json"]) == 0
    by_export = json.loads(capsys.readouterr().out)
    assert main(["predict", str(run["ckpt"]), str(image), "--json"]) == 0
    by_ckpt = json.loads(capsys.readouterr().out)
    assert [t["class"] for t in by_export[0]["top"]] == [t["class"] for t in by_ckpt[0]["top"]]
    for a, b in zip(by_export[0]["top"], by_ckpt[0]["top"]):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)
    # the folded network rebuilds from the file alone: no BatchNorm left
    net = load_deployed(run["model.safetensors"])
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
