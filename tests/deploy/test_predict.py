"""The input contract end to end: a trained checkpoint records it, exported files carry it,
``resdist predict`` follows it (same classes as evaluation), baked normalisation is exact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from resdist.cli import main  # noqa: E402
from resdist.config import Config  # noqa: E402
from resdist.data import build_data  # noqa: E402
from resdist.data.contract import InputContract  # noqa: E402
from resdist.deploy import export  # noqa: E402
from resdist.deploy.exporter import onnx_opset, read_contract  # noqa: E402
from resdist.deploy.predictor import Predictor, load_image, predict  # noqa: E402
from resdist.engine.checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402
from resdist.engine.trainer import train  # noqa: E402

TINY = {
    "data": {"name": "synthetic", "synthetic_samples": 96, "synthetic_size": 16,
             "synthetic_channels": 1, "synthetic_classes": 4, "batch_size": 32},
    "model": {"name": "plain20", "width_mult": 0.25},
    "optim": {"lr": 0.05, "schedule": "onecycle"},
    "train": {"epochs": 2, "progress": False, "tensorboard": False, "device": "cpu"},
}
N_IMAGES = 6


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """A tiny trained run, a few of its test images as PNG files and their evaluation classes."""
    root = tmp_path_factory.mktemp("contract")
    cfg = Config.from_dict(TINY)
    cfg.train.out = str(root / "run")
    torch.manual_seed(0)
    train(cfg)
    data = build_data(cfg.data)
    images, _ = next(iter(data.test))  # normalised as evaluation sees them
    images = images[:N_IMAGES]
    raw = data.test.images[:N_IMAGES]  # the uint8 pixels behind them
    folder = root / "images"
    folder.mkdir()
    files = []
    for i, pixels in enumerate(raw):
        path = folder / f"img{i}.png"
        Image.fromarray(pixels[0].numpy(), mode="L").save(path)
        files.append(path)
    model = model_from_checkpoint(root / "run" / "last.pth").eval()
    with torch.no_grad():
        logits = model(images)
    return {"root": root, "ckpt": root / "run" / "last.pth", "files": files, "folder": folder,
            "classes": logits.argmax(1).tolist(), "logits": logits.numpy(), "raw": raw}


def _plain(obj) -> bool:
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain(v) for v in obj)
    return isinstance(obj, (str, int, float, bool)) or obj is None


def test_checkpoint_records_the_contract_as_plain_types(trained):
    recorded = torch.load(trained["ckpt"], weights_only=True)["input_contract"]
    assert _plain(recorded)
    contract = InputContract.from_dict(recorded)
    assert contract.input_shape == [1, 16, 16] and contract.color_mode == "L"
    assert contract.mean == [0.5] and contract.std == [0.25]
    assert contract.class_names == [f"class_{i}" for i in range(4)]
    assert not contract.normalized_inside and contract.value_range == [0.0, 1.0]


def test_contract_round_trip_checkpoint_onnx_predict(trained, tmp_path):
    """checkpoint -> ONNX metadata -> predict gives the classes evaluation gives."""
    by_ckpt = predict(trained["ckpt"], [str(p) for p in trained["files"]], topk=2)
    assert [r.top[0][1] for r in by_ckpt] == trained["classes"]
    onnx_path = tmp_path / "m.onnx"
    report = export(trained["ckpt"], "onnx", onnx_path, opset=17)
    contract = read_contract(onnx_path)
    assert contract == load_checkpoint(trained["ckpt"]).contract
    assert report.input_contract == contract
    assert "(x / 255 - mean) / std" in report.expects
    by_onnx = predict(onnx_path, [trained["folder"]], topk=2)  # a folder of PNGs
    assert [r.top[0][1] for r in by_onnx] == trained["classes"]
    for a, b in zip(by_ckpt, by_onnx):
        assert a.top[0][0] == b.top[0][0] and a.top[0][2] == pytest.approx(b.top[0][2], abs=1e-5)


@pytest.mark.parametrize("input_dtype", ["float32", "uint8"])
def test_baked_normalisation_gives_the_same_logits(trained, tmp_path, input_dtype):
    path = tmp_path / f"baked-{input_dtype}.onnx"
    report = export(trained["ckpt"], "onnx", path, opset=17, preprocess=True,
                    input_dtype=input_dtype)
    assert report.inputs[0]["dtype"] == input_dtype and report.feature_adds == 0
    contract = read_contract(path)
    assert contract.normalized_inside and contract.input_dtype == input_dtype
    raw = trained["raw"].numpy()
    x = raw if input_dtype == "uint8" else raw.astype(np.float32) / 255.0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(None, {"images": x})
    np.testing.assert_allclose(logits, trained["logits"], rtol=1e-4, atol=1e-4)
    # predict feeds it un-normalised pixels, as its contract says
    assert [r.top[0][1] for r in predict(path, trained["files"], topk=1)] == trained["classes"]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated
def test_baked_torchscript_records_the_contract(trained, tmp_path):
    path = tmp_path / "baked.pt"
    export(trained["ckpt"], "torchscript", path, preprocess=True, input_dtype="uint8")
    contract = read_contract(path)
    assert contract is not None and contract.input_dtype == "uint8"
    module = torch.jit.load(str(path))
    with torch.no_grad():
        logits = module(trained["raw"]).numpy()
    np.testing.assert_allclose(logits, trained["logits"], rtol=1e-4, atol=1e-4)
    got = predict(path, trained["files"], topk=1, trust_torchscript=True)
    assert [r.top[0][1] for r in got] == trained["classes"]


def test_opset_is_honoured_or_refused(trained, tmp_path, capsys):
    out = tmp_path / "m13.onnx"
    assert main(["export", "--checkpoint", str(trained["ckpt"]), "--out", str(out),
                 "--opset", "13"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["opset"] == 13 == onnx_opset(out)
    for bad in ("5", "40"):
        assert main(["export", "--checkpoint", str(trained["ckpt"]), "--out",
                     str(tmp_path / "x.onnx"), "--opset", bad]) == 2
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and f"opset {bad} is not supported" in err and "9..23" in err
    assert not (tmp_path / "x.onnx").exists()


def test_export_succeeds_silently_with_the_contract_in_the_report(trained, tmp_path):
    """The torch.export-based exporter (opset 18) prints nothing but the JSON report."""
    out = tmp_path / "m.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "resdist", "export", "--checkpoint", str(trained["ckpt"]),
         "--out", str(out), "--preprocess"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    report = json.loads(proc.stdout)
    assert report["opset"] == 18 == onnx_opset(out)
    assert report["input_contract"]["normalized_inside"] is True
    assert report["inputs"][0]["name"] == "images"


def test_predict_command_text_json_and_topk(trained, capsys):
    files = [str(p) for p in trained["files"][:2]]
    assert main(["predict", str(trained["ckpt"]), *files, "--topk", "3"]) == 0
    out = capsys.readouterr().out
    assert files[0] in out and out.count("%") == 6 and "class_" in out
    assert main(["predict", str(trained["ckpt"]), *files, "--json", "--topk", "2"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["file"] for r in rows] == files
    for row, want in zip(rows, trained["classes"]):
        probs = [t["probability"] for t in row["top"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True)
        assert row["top"][0]["index"] == want and row["top"][0]["class"] == f"class_{want}"


def test_bad_image_is_one_line_naming_the_file(trained, tmp_path, capsys):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png at all")
    assert main(["predict", str(trained["ckpt"]), str(trained["files"][0]), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "broken.png" in err and err.startswith("resdist predict: error:")
    assert main(["predict", str(trained["ckpt"]), str(tmp_path / "missing.png")]) == 2
    assert "missing.png" in capsys.readouterr().err


def test_images_are_converted_resized_and_cropped_per_the_contract(tmp_path):
    contract = InputContract(input_shape=[1, 8, 8], color_mode="L", resize=10, mean=[0.5],
                             std=[0.5], class_names=["a", "b"])
    path = tmp_path / "rgb.jpg"
    Image.new("RGB", (20, 30), (255, 255, 255)).save(path)  # wide JPEG, colour
    x = load_image(path, contract)
    assert x.shape == (1, 8, 8) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0, atol=1e-2)  # white: (1 - 0.5) / 0.5


def test_old_checkpoint_contract_comes_from_its_config(tmp_path):
    """Checkpoints written before the contract existed: derived from the saved config."""
    from resdist.models import create_model

    kw = {"num_classes": 10, "in_chans": 1, "width_mult": 0.25}
    path = tmp_path / "old.pth"
    torch.save({"model": create_model("plain20", **kw).state_dict(), "model_name": "plain20",
                "model_kwargs": kw, "input_shape": [1, 28, 28], "config": Config().to_dict()},
               path)
    contract = Predictor.load(path).contract
    assert contract.dataset == "fashion-mnist" and contract.mean == [0.286]
    assert contract.class_names[0] == "T-shirt/top" and contract.resize == 28


@pytest.mark.parametrize("options", [{}, {"preprocess": True},
                                     {"preprocess": True, "input_dtype": "uint8"}],
                         ids=["plain", "preprocess", "uint8"])
def test_eval_of_every_onnx_export_equals_eval_of_its_checkpoint(trained, tmp_path, options):
    """Baked normalisation and uint8 input: evaluation feeds what the contract asks for."""
    from resdist.deploy.onnx_eval import evaluate_onnx_file
    from resdist.engine.evaluation import evaluate_checkpoint

    path = tmp_path / "m.onnx"
    export(trained["ckpt"], "onnx", path, opset=17, **options)
    cfg = Config.from_dict(TINY).data
    by_onnx = evaluate_onnx_file(path, cfg)
    by_ckpt = evaluate_checkpoint(trained["ckpt"], device="cpu")
    assert by_onnx["samples"] == by_ckpt.samples
    assert by_onnx["top1"] == pytest.approx(by_ckpt.top1)
    assert by_onnx["loss"] == pytest.approx(by_ckpt.loss, rel=1e-4, abs=1e-5)


def test_sixteen_bit_grey_png_is_scaled_not_clipped(trained, tmp_path):
    """A 16-bit PNG of the same picture predicts as its 8-bit original (Pillow's convert alone
    would clip every pixel above 255 to white)."""
    pixels = trained["raw"][0][0].numpy()
    deep = tmp_path / "deep.png"
    Image.fromarray(pixels.astype(np.uint16) * 257).save(deep)
    assert Image.open(deep).mode == "I;16"
    from resdist.deploy.predictor import load_image

    contract = Predictor.load(trained["ckpt"]).contract
    assert np.array_equal(load_image(deep, contract), load_image(trained["files"][0], contract))


def _with_contract(src: Path, dst: Path, **changes) -> Path:
    import onnx

    model = onnx.load(src)
    for p in model.metadata_props:
        if p.key == "input_contract":
            p.value = json.dumps({**json.loads(p.value), **changes})
    onnx.save(model, dst)
    return dst


def test_a_contract_that_is_not_json_is_one_line(trained, tmp_path, capsys):
    import onnx

    good = tmp_path / "good.onnx"
    export(trained["ckpt"], "onnx", good, opset=17, verify=False)
    for text in ("[" * 100000 + "]" * 100000, "x" * (2 << 20), '{"resize": ' + "9" * 5000 + "}"):
        model = onnx.load(good)
        for p in model.metadata_props:
            if p.key == "input_contract":
                p.value = text
        onnx.save(model, tmp_path / "odd.onnx")
        assert main(["predict", str(tmp_path / "odd.onnx"), str(trained["files"][0])]) == 2
        err = capsys.readouterr().err.strip()
        assert "input contract" in err and "\n" not in err


def test_a_pipe_is_not_an_image(trained, tmp_path, capsys):
    import os

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert main(["predict", str(trained["ckpt"]), str(fifo)]) == 2
    assert "not a regular file or folder" in capsys.readouterr().err


@pytest.mark.parametrize("changes, words", [
    ({"mean": [float("nan")]}, "finite numbers"),
    ({"normalized_inside": "false"}, "normalized_inside must be true or false"),
    ({"resize": 0}, "resize must hold whole numbers"),
    ({"resize": 10**9}, "resize must hold whole numbers"),
    ({"resize": True}, "resize must hold whole numbers"),
    ({"class_names": "abcd"}, "class_names must be a list"),
    ({"class_names": {"0": "a"}}, "class_names must be a list"),
    ({"input_shape": [1, 32, 32], "resize": 32}, "the graph takes input"),
    ({"input_shape": [3, 16, 16], "color_mode": "RGB", "mean": [0, 0, 0], "std": [1, 1, 1]},
     "the graph takes input"),
    ({"color_mode": "RGB"}, "color_mode 'RGB' does not fit 1 channels"),
    ({"class_names": ["a", "b"]}, "outputs 4 logits but its contract names 2"),
    ({"input_dtype": "uint8", "normalized_inside": True, "value_range": [0, 255]},
     "takes float32 input"),
    ({"std": [1e-9]}, "is absurd"),
    ({"layout": "NHWC"}, "layout must be NCHW"),
    ({"value_range": [1, 0]}, "value_range must be [0.0, 1.0]"),
    ({"class_names": ["a\nb\x1b[31mRED"] * 4}, "control or formatting characters"),
    ({"class_names": ["\u202eevil"] * 4}, "control or formatting characters"),
])
def test_a_strangers_contract_is_checked_before_use(trained, tmp_path, capsys, changes, words):
    good = tmp_path / "good.onnx"
    export(trained["ckpt"], "onnx", good, opset=17, verify=False)
    bad = _with_contract(good, tmp_path / "bad.onnx", **changes)
    assert main(["predict", str(bad), str(trained["files"][0])]) == 2
    err = capsys.readouterr().err.strip()
    assert words in err and "\n" not in err and "Traceback" not in err


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save are deprecated
def test_eval_of_a_trusted_torchscript_export_equals_eval_of_its_checkpoint(trained, tmp_path,
                                                                           capsys):
    from resdist.engine.evaluation import evaluate_checkpoint

    path = tmp_path / "m.pt"
    export(trained["ckpt"], "torchscript", path, preprocess=True)
    assert main(["eval", "--checkpoint", str(path)]) == 2  # loading it would run its code
    assert "--trust-torchscript" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(path), "--trust-torchscript", "--set",
                 "data.synthetic_samples=96"]) == 0
    line = capsys.readouterr().out
    ref = evaluate_checkpoint(trained["ckpt"], device="cpu")
    assert "(TorchScript fp32) on synthetic test" in line
    assert f"top-1 {ref.top1:.2f}%" in line and f"({ref.samples} images)" in line


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace/save are deprecated
def test_evaluate_file_scores_every_kind_of_file_alike(trained, tmp_path):
    """The library call behind ``resdist eval``: checkpoint, run folder, ONNX, trusted
    TorchScript and a plain state dict give one score; a TorchScript file needs trust and an
    export has no validation split."""
    from resdist.deploy import DeployError, evaluate_file
    from resdist.engine.checkpoint import load_checkpoint
    from resdist.safe_load import TorchScriptFileError

    ckpt = trained["ckpt"]
    onnx_path, ts_path, sd_path = tmp_path / "m.onnx", tmp_path / "m.pt", tmp_path / "sd.pth"
    export(ckpt, "onnx", onnx_path, opset=17)
    export(ckpt, "torchscript", ts_path)
    torch.save(load_checkpoint(ckpt).build_model().state_dict(), sd_path)
    ref = evaluate_file(ckpt, device="cpu")
    assert ref.model_name == "plain20" and ref.samples > 0
    samples = ["data.synthetic_samples=96"]  # an export records the data set, not its size
    scores = [evaluate_file(ckpt.parent, device="cpu"), evaluate_file(onnx_path, overrides=samples),
              evaluate_file(ts_path, trust_torchscript=True, overrides=samples)]
    assert scores[1].model_name == "m.onnx (ONNX fp32)"
    assert scores[2].model_name == "m.pt (TorchScript fp32)"
    for score in scores:
        assert score.samples == ref.samples and score.top1 == pytest.approx(ref.top1)
        assert score.loss == pytest.approx(ref.loss, rel=1e-4, abs=1e-5)
    by_state_dict = evaluate_file(
        sd_path, model="plain20", data="synthetic", device="cpu",
        overrides=[f"{k}={v}" for k, v in (("data.synthetic_samples", 96),
                                           ("data.synthetic_size", 16),
                                           ("data.synthetic_channels", 1),
                                           ("data.synthetic_classes", 4),
                                           ("model.width_mult", 0.25))])
    assert by_state_dict.samples == ref.samples and by_state_dict.top1 == pytest.approx(ref.top1)
    with pytest.raises(TorchScriptFileError, match="--trust-torchscript"):
        evaluate_file(ts_path)
    with pytest.raises(DeployError, match="test split only"):
        evaluate_file(onnx_path, split="val")
