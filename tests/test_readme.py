"""The README stays true: every ``resdist`` command in its bash blocks runs, shrunk to tiny data
written in the real on-disk formats, and its "Deploying the model" Python example runs and
prints the class ``resdist predict`` prints.

Shrinking only appends options (argparse keeps the last value of a flag) or, for ``torchrun``
lines, runs the same ``resdist`` command once with ``--dry-run``. A README command of a kind
this test does not know how to shrink fails the test, so the two cannot drift apart.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resdist.cli import main

sys.path.insert(0, str(Path(__file__).parent / "data"))
from data_writers import write_cifar, write_fmnist  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"
#: pages whose bash commands are run like the README's (the README's usage continued)
COMMAND_PAGES = (README, DOCS / "training.md")


def documented_commands() -> list[list[str]]:
    return [argv for page in COMMAND_PAGES for argv in readme_commands(page.read_text())]

TINY_FMNIST = ["--data-dir", "fm", "--limit-train", "64", "--limit-test", "32", "--batch-size",
               "32", "--epochs", "1", "--no-progress", "--set", "model.width_mult=0.25",
               "--set", "train.tensorboard=false", "--set", "train.device=cpu"]
TINY_PRESET = ["--set", "data.limit_train=8", "--set", "data.limit_test=4", "--set",
               "data.batch_size=4", "--set", "data.eval_batch_size=4", "--epochs", "1",
               "--no-progress", "--set", "train.tensorboard=false", "--set", "train.device=cpu"]
TINY_SUITE = ["--seeds", "0", "--data-dir", "fm", "--out", "runs/rep", "--results", "runs/rep",
              "--set", "model.name=plain20", "--set", "model.width_mult=0.25", "--set",
              "data.limit_train=64", "--set", "data.limit_test=32", "--set", "data.batch_size=32",
              "--set", "train.epochs=1"]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def readme_commands(text: str) -> list[list[str]]:
    """``resdist ...`` and ``torchrun ... -m resdist ...`` lines of the bash blocks, with
    continuation lines joined and trailing comments dropped, as argv lists."""
    commands = []
    for block in bash_blocks(text):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            argv = shlex.split(line, comments=True)
            if argv and (argv[0] == "resdist" or argv[0] == "torchrun"):
                commands.append(argv)
    return commands


def shrink(argv: list[str]) -> list[str]:
    """The README command as ``main()`` arguments, on tiny data."""
    if argv[0] == "torchrun":
        at = argv.index("resdist")
        assert argv[at - 1] == "-m", argv
        return argv[at + 1 :] + ["--dry-run"]
    args = argv[1:]
    command = args[0]
    if command == "train":
        if "--dry-run" in args:
            return args
        return args + (TINY_PRESET if "--preset" in args else TINY_FMNIST)
    if command == "eval":
        return args + ["--data-dir", "fm"]
    if command == "export":
        return args + ["--opset", "17"]  # the TorchScript-based exporter: quicker
    if command == "profile":
        return args + ["--runs", "2", "--batch-sizes", "1", "--threads", "1", "--in-chans", "1",
                       "--opset", "17"]  # the TorchScript-based exporter: quicker
    if command == "reproduce":  # TINY_SUITE's student is plain20, so --runs names change too
        return [a.replace("32-", "20-") for a in args] + TINY_SUITE
    if command in ("predict", "models", "presets"):
        return args
    pytest.fail(f"README command {shlex.join(argv)!r}: this test does not know how to shrink "
                f"{command!r}; teach shrink() before documenting it")
    return []


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory with tiny Fashion-MNIST (./fm), CIFAR-100 (./data) and a PNG."""
    monkeypatch.chdir(tmp_path)
    arrays = write_fmnist(tmp_path / "fm", n_train=64, n_test=32)
    write_cifar(tmp_path / "data", 100, per_batch=8, n_test=4)
    Image.fromarray(arrays["t10k-images-idx3-ubyte"][0], mode="L").save(tmp_path / "shoe.png")
    return tmp_path


def test_readme_documents_every_command():
    seen = {shrink(argv)[0] for argv in documented_commands()}
    assert {"train", "eval", "export", "predict", "profile", "reproduce", "models",
            "presets"} <= seen


@pytest.mark.slow
def test_every_readme_command_runs_shrunk(workdir: Path, capsys):
    torch.manual_seed(0)
    commands = documented_commands()
    assert len(commands) >= 10
    for argv in commands:
        args = shrink(argv)
        code = main(args)
        captured = capsys.readouterr()
        assert code == 0, f"{shlex.join(argv)} -> {shlex.join(args)}: {captured.err[-2000:]}"
        assert "Traceback" not in captured.err
    assert (workdir / "plain56.onnx").is_file()
    assert (workdir / "runs" / "cifar100-plain18-jointrd" / "last.pth").is_file()


def _deploy_example(text: str) -> str:
    section = text.split("## Deploying the model", 1)[1].split("\n## ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


def test_readme_onnx_runtime_example_prints_the_predicted_class(tmp_path: Path, capsys):
    """The example runs as written, on an exported model and a PNG, and agrees with predict;
    docs/deploy.md repeats it verbatim."""
    from resdist.data.contract import contract_for_data
    from resdist.deploy import export
    from resdist.engine.checkpoint import Checkpoint
    from resdist.models import create_model

    code = _deploy_example(README.read_text())
    assert code in (README.parent / "docs" / "deploy.md").read_text()
    assert len(code.strip().splitlines()) <= 18
    import json

    rng = np.random.default_rng(0)
    cases = [  # Fashion-MNIST; an ImageFolder model at 20x20 with a crop margin, bicubic
        ("fashion-mnist", {"num_classes": 10, "in_chans": 1, "width_mult": 0.25},
         contract_for_data("fashion-mnist"), rng.integers(0, 256, (28, 28), dtype=np.uint8)),
        ("imagefolder", {"num_classes": 3, "in_chans": 3, "width_mult": 0.25},
         contract_for_data("imagefolder", image_size=20, resize=24, interpolation="bicubic",
                           class_names=["cat", "dog", "ship"]),
         rng.integers(0, 256, (31, 45, 3), dtype=np.uint8)),
    ]
    for name, kw, contract, pixels in cases:
        folder = tmp_path / name
        folder.mkdir()
        model = create_model("plain20", **kw)
        for m in model.modules():  # non-trivial statistics, so that classes differ
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
        ckpt = Checkpoint("plain20", kw, model.state_dict(), contract=contract).save(
            folder / "last.pth")
        export(ckpt, "onnx", folder / "plain56.onnx", opset=17, verify=False)
        Image.fromarray(pixels).save(folder / "shoe.png")
        proc = subprocess.run([sys.executable, "-c", code], cwd=folder, capture_output=True,
                              text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        assert main(["predict", str(folder / "plain56.onnx"), str(folder / "shoe.png"),
                     "--topk", "1", "--json"]) == 0
        best = json.loads(capsys.readouterr().out)[0]["top"][0]["class"]
        assert proc.stdout.strip() == best, name


def test_docs_own_loop_checkpoint_example_makes_a_file_every_command_takes(tmp_path, capsys,
                                                                          monkeypatch):
    """docs/deploy.md's "from your own loop" example runs as written and its file predicts."""
    from resdist.models import create_model

    text = (README.parent / "docs" / "deploy.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    (code,) = [b for b in blocks if "Checkpoint(" in b]
    monkeypatch.chdir(tmp_path)
    exec(code, {"model": create_model("plain20", num_classes=10, in_chans=1)})  # noqa: S102
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "x.png")
    from resdist.data.fashion_mnist import CLASS_NAMES
    from resdist.engine import load_checkpoint

    assert main(["predict", "plain20.pth", "x.png", "--topk", "1"]) == 0
    out = capsys.readouterr().out
    assert any(name in out for name in CLASS_NAMES), out  # a Fashion-MNIST class by name
    assert load_checkpoint("plain20.pth").contract.class_names == list(CLASS_NAMES)


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_every_relative_link_in_readme_and_docs_resolves():
    """Links to files exist, and links to a heading (``page.md#anchor``) name one."""
    pages = [README, *sorted(DOCS.glob("*.md"))]
    broken = []
    for page in pages:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", dest.read_text(), flags=re.M)
                if anchor not in {_slug(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert broken == []


def test_readme_library_example_trains_saves_and_exports(tmp_path, monkeypatch):
    """The README's library example runs as written (one step on random images) and ends in an
    ONNX file with the contract and no shortcut Add."""
    pytest.importorskip("onnx")
    from resdist.data.contract import contract_for_data
    from resdist.deploy.exporter import count_feature_adds, read_contract

    section = README.read_text().split("### Library", 1)[1].split("\n### ", 1)[0]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    # the README's teacher is a trained one; a randomly initialised ResNet-56's features grow
    # with depth (the feature loss starts near 1e10 and one step leaves the student's outputs
    # NaN, which export refuses), so the test stands in a teacher whose residual branches
    # start at zero, as a trained one's are bounded
    trained = 'create_model("resnet56", num_classes=10, in_chans=1)'
    assert trained in code
    code = code.replace(trained, trained[:-1] + ", zero_init_residual=True)")
    monkeypatch.chdir(tmp_path)
    loader = [(torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,)))]
    exec(code, {"epochs": 1, "loader": loader})  # noqa: S102
    assert read_contract(tmp_path / "plain56.onnx") == contract_for_data("fashion-mnist")
    assert count_feature_adds(tmp_path / "plain56.onnx") == 0
