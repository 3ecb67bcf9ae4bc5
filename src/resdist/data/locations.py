"""Where each data set is looked for when ``data.data_dir`` is not given."""

from __future__ import annotations

import os
from pathlib import Path

from ..config import DATASETS, check_choice
from .errors import DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package installs the four gzipped IDX files."""

LOCAL_DATA = Path("data")
"""The default download root (relative to the working directory), as in torchvision examples."""

_DEFAULTS: dict[str, list[Path]] = {
    "fashion-mnist": [DEBIAN_FASHION_MNIST, LOCAL_DATA],
    "cifar10": [LOCAL_DATA],
    "cifar100": [LOCAL_DATA],
    "imagefolder": [LOCAL_DATA / "imagenet"],
}
DATASET_NAMES = DATASETS


def default_data_dir(name: str) -> list[Path]:
    """The folders searched, in order, for data set ``name`` when no ``data_dir`` is given."""
    check_choice("data.name", name, DATASETS, "data set", DataError)
    return list(_DEFAULTS.get(name, []))


def show(path: Path) -> str:
    """A path as messages print it: absolute, so a relative default is unambiguous."""
    return str(path.absolute())


def absolute_data_dir(name: str, data_dir: str | os.PathLike | None) -> str | None:
    """``data_dir`` as an absolute path, for recording in a run (so that the run's folder is
    found from any working directory); None stays None (the data set's default locations,
    searched in order) and the synthetic set has no folder."""
    if name == "synthetic" or data_dir is None:
        return None
    return os.path.abspath(os.path.expanduser(os.fspath(data_dir)))
