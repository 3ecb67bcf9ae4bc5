import subprocess
import sys

import pytest
import torch

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


def test_the_command_line_starts_without_importing_torch():
    # torch takes seconds to import: `resdist --help`, `docs` and `presets` must not wait for it
    code = ("import contextlib, io, sys\n"
            "from resdist.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['docs']) == 0 and main(['presets']) == 0\n"
            "print(sorted(m for m in ('torch', 'numpy', 'onnx', 'onnxruntime') "
            "if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


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
    (["train", "--data", "synthetic", "--dirac", "--student-param", "repvgg"], "drop --dirac"),
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


def _subparsers(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_of_every_command_has_help_and_at_most_one_default():
    from resdist.cli import build_parser

    parser = build_parser()
    commands = _subparsers(parser)
    assert {"train", "eval", "export", "predict", "profile", "presets", "models", "demo",
            "reproduce"} <= set(commands)
    for parser_ in [parser, *commands.values()]:
        for action in parser_._actions:
            if action.dest in ("help",) or action.help == "==SUPPRESS==":
                continue
            if action.dest == "command":  # the sub-command choice itself
                continue
            where = f"{parser_.prog} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help"
            text = parser_._get_formatter()._expand_help(action)
            assert text.count("(default") <= 1, f"{where}: default shown twice: {text}"
        # no formatter that appends a second "(default: ...)"
        assert parser_.formatter_class is __import__("argparse").HelpFormatter


def test_train_help_explains_the_options_an_issue_found_bare(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for words in ("passes over the training set", "seed of weight initialisation",
                  "learning-rate schedule", "NHWC memory layout", "`resdist models` lists them",
                  "--dry-run"):
        assert words in out


def test_models_lists_the_registry(capsys):
    from resdist.models import list_models

    assert main(["models"]) == 0
    listing, timm_text = capsys.readouterr().out.split("\n\n")
    lines = listing.splitlines()
    assert [ln.split()[0] for ln in lines] == list_models()
    # timm: names are explained after the registry, with their plain students
    assert timm_text.startswith("timm:ARCH") and "teachers of plain18d" in timm_text
    assert main(["models", "timm*"]) == 0
    assert capsys.readouterr().out.startswith("timm:ARCH")
    resnet50 = next(ln for ln in lines if ln.startswith("resnet50 "))
    assert "25,557,032 params" in resnet50 and "ResNet-50" in resnet50
    resnet8 = next(ln for ln in lines if ln.startswith("resnet8 "))
    assert "78,042 params" in resnet8 and "MLPerf Tiny" in resnet8
    from resdist.models import parameter_count

    assert parameter_count("resnet50") == 25_557_032  # torchvision's ResNet-50, on no memory
    assert main(["models", "plain*"]) == 0
    assert all(ln.startswith("plain") for ln in capsys.readouterr().out.splitlines())
    assert main(["models", "vgg*"]) == 2


def test_presets_lists_names_with_one_line_each_and_prints_one(capsys):
    from resdist.presets import list_presets

    assert main(["presets"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == list_presets()
    assert all(len(ln.split(maxsplit=1)) == 2 for ln in lines)
    assert main(["presets", "cifar100/plain18-jointrd"]) == 0
    assert "name: cifar100" in capsys.readouterr().out


def test_dry_run_prints_config_and_model_summary_and_writes_nothing(tmp_path, capsys,
                                                                   monkeypatch):
    import yaml

    from resdist.config import Config

    monkeypatch.chdir(tmp_path)
    out_dir = tmp_path / "never"
    assert main(["train", "--preset", "cifar100/plain18-jointrd", "--out", str(out_dir),
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    config_text, summary = out.split("\n\n", 1)
    cfg = Config.from_dict(yaml.safe_load(config_text))
    assert cfg.model.name == "plain18" and cfg.train.out == str(out_dir)
    assert "11.228 M parameters" in summary and "555.5 M MACs" in summary
    assert "100 classes" in summary and "stage 4  -> 512x4x4" in summary
    assert not out_dir.exists() and list(tmp_path.iterdir()) == []
    # --config FILE still works (here: a copy of a preset), flags override it
    from resdist.presets import preset_text

    (tmp_path / "mine.yaml").write_text(preset_text("demo"))
    assert main(["train", "--config", "mine.yaml", "--model", "plain20", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "name: plain20" in out and "limit_train: 24000" in out and "1x28x28" in out
    (tmp_path / "mine.yaml").unlink()


@pytest.mark.parametrize("extra, words", [
    ([], "no teacher given: the run would stop"),
    (["--set", "teacher.train=true"], "through teacher resnet20 (co-trained from random weights)"),
    (["--teacher-weights", "t.pth"], "the run would stop here: teacher weights file t.pth not "
                                      "found"),
])
def test_dry_run_says_where_the_teacher_comes_from(capsys, extra, words):
    assert main(["train", "--data", "synthetic", "--model", "plain20", "--method", "kd",
                 "--dry-run", *extra]) == 0
    assert words in capsys.readouterr().out


def test_dry_run_does_not_call_a_fifo_teacher_checkpoint_loaded(tmp_path, capsys):
    import os

    fifo = tmp_path / "fifo.pth"
    os.mkfifo(fifo)
    assert main(["train", "--data", "synthetic", "--model", "plain20", "--method", "kd",
                 "--dry-run", "--teacher-checkpoint", str(fifo)]) == 0
    out = capsys.readouterr().out
    assert "loaded and checked" not in out
    assert f"teacher checkpoint {fifo} not found" in out


@pytest.mark.parametrize("flags, kwargs", [
    (["--student-param", "repvgg"], {"repvgg": True}),
    (["--student-param", "dirac"], {"dirac": True}),
    (["--dirac"], {"dirac": True}),
    ([], {}),
])
def test_student_param_flag_picks_the_student_convs(flags, kwargs):
    from resdist.cli import build_parser
    from resdist.cli.train import config_from_args
    from resdist.engine.build import model_kwargs

    cfg = config_from_args(build_parser().parse_args(["train", "--data", "synthetic", *flags]))
    built = model_kwargs(cfg.validate().model, 10, 3)
    assert {k: v for k, v in built.items() if k in ("dirac", "repvgg")} == kwargs


def test_eval_scores_a_plain_state_dict_given_its_model(tmp_path, capsys):
    from resdist.data.contract import contract_for_data
    from resdist.engine import Checkpoint
    from resdist.models import create_model

    kw = {"num_classes": 10, "in_chans": 3, "width_mult": 0.25}
    net = create_model("resnet20", **kw)
    torch.save(net.state_dict(), tmp_path / "sd.pth")
    Checkpoint("resnet20", kw, net.state_dict(), contract=contract_for_data("synthetic"),
               config={"data": {"name": "synthetic"}}).save(tmp_path / "ck.pth")
    tiny = ["--data", "synthetic", "--limit-test", "40", "--device", "cpu"]
    assert main(["eval", "--checkpoint", str(tmp_path / "ck.pth"), *tiny]) == 0
    by_checkpoint = capsys.readouterr().out.split(":", 1)[1]
    assert main(["eval", "--checkpoint", str(tmp_path / "sd.pth"), "--model", "resnet20",
                 "--set", "model.width_mult=0.25", *tiny]) == 0
    assert capsys.readouterr().out.split(":", 1)[1] == by_checkpoint
    assert main(["eval", "--checkpoint", str(tmp_path / "sd.pth"), "--model", "resnet20"]) == 2
    assert "pass --data NAME" in capsys.readouterr().err
