"""Every user-facing error derives from ResdistError, and the CLI turns it into one line."""

from __future__ import annotations

import ast
from functools import partial
from pathlib import Path

import pytest
import torch
from torch import nn

import resdist
from resdist.cli import main
from resdist.config import ConfigError
from resdist.data import DataError
from resdist.deploy import DeployError, MissingDependencyError
from resdist.distill import (
    DistillError,
    FeatureKD,
    HintonKD,
    ResidualDistiller,
    StageMismatchError,
    margin_feature_loss,
)
from resdist.engine import CheckpointError
from resdist.errors import ResdistError
from resdist.models import UnknownModelError, create_model
from resdist.models.pretrained import WeightsError


@pytest.mark.parametrize("cls", [ConfigError, DataError, DeployError, MissingDependencyError,
                                 DistillError, StageMismatchError, CheckpointError, UnknownModelError,
                                 WeightsError])
def test_user_errors_share_one_base(cls):
    assert issubclass(cls, ResdistError)


def test_cli_prints_one_line_for_a_resdist_error(tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    assert main(["eval", "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("resdist eval: error: checkpoint not found")


# --- no bare built-in errors in user-reachable code ----------------------------------------------

BUILTIN_ERRORS = {"Exception", "ValueError", "TypeError", "RuntimeError", "KeyError", "IndexError",
                  "LookupError", "AttributeError", "OSError", "IOError", "FileNotFoundError",
                  "PermissionError", "NotImplementedError", "ArithmeticError",
                  "ZeroDivisionError", "FloatingPointError"}
PACKAGE = Path(resdist.__file__).resolve().parent


def _caught(handler: ast.ExceptHandler) -> set[str]:
    if handler.type is None:
        return {"Exception"}
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {t.id for t in types if isinstance(t, ast.Name)}


def _bare_raises(node: ast.AST, caught: frozenset[str] = frozenset()) -> list[ast.Raise]:
    """``raise <built-in error>`` statements under ``node`` that no enclosing ``try`` of the same
    function catches (such a raise is flow control inside one function, never seen by a user)."""
    found = []
    if isinstance(node, ast.Raise) and node.exc is not None:
        exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
        if isinstance(exc, ast.Name) and exc.id in BUILTIN_ERRORS \
                and not caught & {exc.id, "Exception"}:
            found.append(node)
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda | ast.ClassDef):
        caught = frozenset()  # runs later, outside the try that surrounds its definition
        if getattr(node, "name", "") == "__getattr__":  # Python's protocol: AttributeError
            caught = frozenset({"AttributeError"})
    if isinstance(node, ast.Try):
        inner = caught | frozenset().union(*(_caught(h) for h in node.handlers))
        for child in node.body:
            found += _bare_raises(child, inner)
        for child in [*node.handlers, *node.orelse, *node.finalbody]:
            found += _bare_raises(child, caught)
        return found
    for child in ast.iter_child_nodes(node):
        found += _bare_raises(child, caught)
    return found


def test_the_package_raises_no_bare_builtin_error():
    """Every error resdist raises is a ResdistError subclass (one line, exit status 2 in the
    CLI); internal invariants are ``assert``s."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        offenders += [f"{path.relative_to(PACKAGE)}:{r.lineno}" for r in _bare_raises(tree)]
    assert not offenders, offenders


def test_the_walk_finds_bare_raises():
    code = ("def f(x):\n    if x:\n        raise ValueError('no')\n"
            "    try:\n        raise KeyError(x)\n    except KeyError:\n        pass\n"
            "    try:\n        def g():\n            raise TypeError\n    except TypeError:\n"
            "        raise RuntimeError('again')\n")
    assert [r.lineno for r in _bare_raises(ast.parse(code))] == [3, 10, 12]


def test_user_errors_of_the_distill_package_are_one_line(tmp_path):
    norm = partial(nn.BatchNorm2d, affine=False)
    teacher = create_model("resnet20", num_classes=10, in_chans=1, width_mult=0.25,
                           norm_layer=norm)
    student = create_model("plain20", num_classes=10, in_chans=1, width_mult=0.25)
    with pytest.raises(DistillError, match="affine") as caught:
        ResidualDistiller(teacher, student)
    teacher = create_model("resnet20", num_classes=10, in_chans=1, width_mult=0.25)
    cases = [
        (lambda: ResidualDistiller(teacher, student, kd_temperature=0), "kd_temperature"),
        (lambda: ResidualDistiller(teacher, student, kd_alpha="0.9"), "kd_alpha"),
        (lambda: HintonKD(teacher, student, alpha=1.5), "alpha"),
        (lambda: HintonKD("teacher.pth", student), "torch.nn.Module"),
        (lambda: FeatureKD(teacher, student, feature_weight=float("nan")), "feature_weight"),
        (lambda: margin_feature_loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 8, 2, 2),
                                     torch.zeros(8)), "differ in shape"),
    ]
    messages = [str(caught.value)]
    for make, words in cases:
        with pytest.raises(DistillError, match=words) as caught:
            make()
        messages.append(str(caught.value))
    assert all(issubclass(DistillError, cls) for cls in (ResdistError, ValueError))
    assert all("\n" not in m for m in messages)
