"""The one rule of the layout: imports only point down data -> models -> distill -> engine ->
deploy -> the command line. ``errors``, ``config`` and the packaged ``presets`` (config data) form
the floor every package may use."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import resdist

PACKAGE = Path(resdist.__file__).parent
FLOORS = {"errors": 0, "config": 0, "presets": 0, "safe_load": 0, "weights": 0, "atomic": 0, "machine": 0, "tables": 0, "guides": 0, "lazy": 0, "data": 1, "models": 2, "distill": 3, "engine": 4,
          "deploy": 5, "experiments": 6, "cli": 6, "__main__": 6, "__init__": 6}


def _floor(module: str) -> int:
    """``resdist.distill.jointrd`` -> the floor of ``distill``."""
    parts = module.split(".")
    return FLOORS[parts[1] if len(parts) > 1 else "__init__"]


def _imports(path: Path) -> list[str]:
    """Every resdist module ``path`` imports (top-level or inside functions)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("resdist")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("resdist"):
                found.append(target)
    return found


def _module(path: Path) -> str:
    return ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)


def test_imports_only_point_down():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = _module(path)
        for target in _imports(path):
            if target != "resdist" and _floor(target) > _floor(me):
                upward.append(f"{me} imports {target}")
    assert upward == []


def test_models_and_distill_never_import_engine_or_deploy():
    for floor in ("models", "distill"):
        for path in (PACKAGE / floor).rglob("*.py"):
            for target in _imports(path):
                assert not target.startswith(("resdist.engine", "resdist.deploy")), (path, target)


def test_experiments_never_import_the_command_line():
    # same floor as cli: the command line may use the experiments, never the other way round
    for path in (PACKAGE / "experiments").rglob("*.py"):
        for target in _imports(path):
            assert not target.startswith("resdist.cli"), (path, target)


def test_relative_imports_resolve_to_real_modules():
    # guards the resolution above: every resolved target names a file or package that exists
    for path in PACKAGE.rglob("*.py"):
        for target in _imports(path):
            rel = Path(*target.split(".")[1:])
            assert (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel).is_dir(), target


@pytest.mark.parametrize("package", ["resdist.data", "resdist.engine", "resdist.deploy",
                                     "resdist.deploy.formats"])
def test_lazy_packages_give_every_public_name(package):
    module = importlib.import_module(package)
    missing = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert missing == []
    assert set(module.__all__) <= set(dir(module))
    with pytest.raises(AttributeError, match="no_such_name"):
        module.no_such_name  # noqa: B018


def test_a_package_function_is_not_shadowed_by_a_submodule_of_its_name():
    # the deploy submodules are exporter/predictor, so importing them (as the command line
    # does) never turns resdist.deploy.export or .predict into a module
    import resdist.deploy
    import resdist.deploy.exporter
    import resdist.deploy.predictor

    assert resdist.deploy.export is resdist.deploy.exporter.export
    assert resdist.deploy.predict is resdist.deploy.predictor.predict
