"""After a plain (non-editable) pip install, the presets are found by name from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# one xdist worker runs this module (`make test` uses --dist loadgroup): one pip install
pytestmark = pytest.mark.xdist_group("install")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The package installed with ``pip install --target`` from a copy of the source tree (so the
    build writes nothing into the repository)."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "src", source / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    target = tmp / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"pip install failed:\n{proc.stderr[-2000:]}")
    return target


def _resdist(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-m", "resdist", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, check=False)


def test_presets_are_found_from_another_directory_after_install(installed, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([sys.executable, "-c", "import resdist; print(resdist.__file__)"],
                           cwd=elsewhere, env={**os.environ, "PYTHONPATH": str(installed)},
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(installed))  # the installed copy, not the source tree
    assert (installed / "resdist" / "presets" / "cifar100" / "plain18-jointrd.yaml").is_file()
    listing = _resdist(installed, elsewhere, "presets")
    assert listing.returncode == 0, listing.stderr
    assert "cifar100/plain18-jointrd " in listing.stdout and "imagenet/plain50-jointrd " \
        in listing.stdout
    run = _resdist(installed, elsewhere, "train", "--preset", "cifar100/plain18-jointrd",
                   "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "name: cifar100" in run.stdout and "100 classes" in run.stdout
    assert list(elsewhere.iterdir()) == []  # a dry run writes nothing


def test_the_guides_are_installed_and_shown_by_resdist_docs(installed, tmp_path):
    """``resdist --help`` points to ``resdist docs``; the guides exist after a plain install."""
    listing = _resdist(installed, tmp_path, "docs")
    assert listing.returncode == 0, listing.stderr
    shipped = sorted(p.stem for p in (REPO / "docs").glob("*.md") if p.name != "README.md")
    assert [line.split()[0] for line in listing.stdout.splitlines()] == shipped
    page = _resdist(installed, tmp_path, "docs", "deploy")
    assert page.returncode == 0 and page.stdout == (REPO / "docs" / "deploy.md").read_text()
    assert "resdist docs" in _resdist(installed, tmp_path, "--help").stdout
    missing = _resdist(installed, tmp_path, "docs", "deplyo")
    assert missing.returncode == 2 and "Did you mean deploy?" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
