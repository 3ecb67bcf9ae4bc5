"""``resdist export`` / ``resdist profile`` handlers: happy paths and one-line user errors."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from resdist.cli.deploy import add_export_parser, add_profile_parser  # noqa: E402
from resdist.data.contract import contract_for_data  # noqa: E402
from resdist.deploy import MissingDependencyError, export  # noqa: E402
from resdist.engine.checkpoint import Checkpoint  # noqa: E402
from resdist.models import create_model  # noqa: E402

KW = {"num_classes": 10, "in_chans": 1, "width_mult": 0.5}


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="resdist")
    sub = parser.add_subparsers(dest="command", required=True)
    add_export_parser(sub)
    add_profile_parser(sub)
    return parser.parse_args(argv)


def run(*argv: str) -> int:
    args = parse(*argv)
    return args.func(args)


@pytest.fixture
def checkpoint(tmp_path):
    model = create_model("plain20", **KW)
    path = tmp_path / "run" / "last.pth"
    contract = contract_for_data("synthetic", in_chans=1, image_size=16, num_classes=10)
    Checkpoint("plain20", KW, model.state_dict(), contract=contract).save(path)
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert msg and "\n" not in msg
    return msg


def test_export_command_writes_and_reports(checkpoint, tmp_path, capsys):
    out = tmp_path / "plain.onnx"
    assert run("export", "--checkpoint", str(checkpoint), "--format", "onnx",
               "--out", str(out)) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["feature_adds"] == 0 and report["max_rel_error"] < 1e-4
    # a run folder works too (last.pth inside), with an explicit input shape
    assert run("export", "--checkpoint", str(checkpoint.parent), "--format", "torchscript",
               "--out", str(tmp_path / "p.pt"), "--input-shape", "1", "8", "8") == 0


def test_export_command_user_errors(tmp_path):
    with pytest.raises(ValueError) as err:
        run("export", "--checkpoint", str(tmp_path / "nope.pth"), "--out", str(tmp_path / "m"))
    assert "checkpoint not found" in one_line(err)
    bad = tmp_path / "bad.pth"
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError) as err:
        run("export", "--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx"))
    assert "not a resdist checkpoint" in one_line(err)
    with pytest.raises(SystemExit):  # argparse rejects the format itself
        parse("export", "--checkpoint", str(bad), "--format", "coreml", "--out", "m")


def test_export_of_an_exported_file_says_to_start_from_the_checkpoint(checkpoint, tmp_path):
    out = tmp_path / "m.onnx"
    assert run("export", "--checkpoint", str(checkpoint), "--out", str(out), "--opset",
               "17") == 0
    with pytest.raises(ValueError) as err:
        run("export", "--checkpoint", str(out), "--out", str(tmp_path / "again.onnx"))
    assert "is an exported ONNX file; export starts from the resdist checkpoint" in \
        one_line(err)
    assert not (tmp_path / "again.onnx").exists()
    # --out under a file, as if it were a folder
    with pytest.raises(ValueError) as err:
        run("export", "--checkpoint", str(checkpoint), "--out", str(out / "x.onnx"))
    assert f"{out} is a file, not a folder" in one_line(err)


def test_missing_onnx_names_the_extra(monkeypatch, tmp_path):
    import resdist.deploy.errors as errors

    real = errors.importlib.import_module

    def fake(name, *a, **k):
        if name.split(".")[0] == "onnx":
            raise ImportError("No module named 'onnx'")
        return real(name, *a, **k)

    monkeypatch.setattr(errors.importlib, "import_module", fake)
    with pytest.raises(MissingDependencyError) as err:
        export(create_model("plain20", **KW), "onnx", tmp_path / "m.onnx", (1, 16, 16))
    assert "pip install 'resdist[onnx]'" in one_line(err)


def test_profile_command(tmp_path, capsys):
    out = tmp_path / "prof"
    assert run("profile", "resnet20", "plain20", "--input-size", "8", "--in-chans", "1",
               "--no-latency", "--out", str(out), "--opset", "17") == 0
    printed = capsys.readouterr().out
    assert "resnet20 / plain20" in printed
    assert (out / "profile.json").is_file() and (out / "profile.png").is_file()
    args = parse("profile", "plain56", "--threads", "1", "all", "--batch-sizes", "1", "4")
    assert args.threads == [1, 0] and args.batch_sizes == [1, 4]


def test_profile_command_user_errors(tmp_path):
    with pytest.raises(ValueError) as err:
        run("profile", "resnet57", "--no-latency")
    assert "resnet57" in one_line(err)
    with pytest.raises(ValueError) as err:
        run("profile", str(tmp_path / "missing.pth"), "--no-latency")
    assert "checkpoint not found" in one_line(err)
    with pytest.raises(SystemExit):
        parse("profile", "plain20", "--threads", "-2")
