"""Fixtures: tiny data sets written in the exact on-disk formats inside ``tmp_path``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from data_writers import write_cifar, write_fmnist


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = tmp_path / "fmnist"
    return folder, write_fmnist(folder)


@pytest.fixture
def cifar10_root(tmp_path: Path) -> tuple[Path, dict]:
    return tmp_path, write_cifar(tmp_path, 10)
