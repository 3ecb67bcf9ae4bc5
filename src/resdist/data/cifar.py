"""CIFAR-10 and CIFAR-100 from the python-pickle folders the official archives unpack to."""

from __future__ import annotations

import importlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DataError
from .locations import default_data_dir, show


@dataclass(frozen=True)
class _Layout:
    folder: str
    train: tuple[str, ...]
    test: str
    meta: str
    label_key: str
    names_key: str
    url: str


LAYOUTS = {
    10: _Layout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
        "batches.meta", "labels", "label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    ),
    100: _Layout(
        "cifar-100-python", ("train",), "test", "meta", "fine_labels", "fine_label_names",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    ),
}

# The only globals a CIFAR batch pickle refers to (numpy arrays, Python 3 bytes); anything else
# is refused, so loading a batch cannot run arbitrary code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"): ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"): ("numpy", "ndarray"),
    ("numpy", "dtype"): ("numpy", "dtype"),
    ("_codecs", "encode"): ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        target = _ALLOWED_GLOBALS.get((module, name))
        if target is None:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        mod, attr = target
        try:
            return getattr(importlib.import_module(mod), attr)
        except ImportError:  # numpy < 2 has numpy.core only
            return getattr(importlib.import_module(mod.replace("._core", ".core")), attr)


def _str(x: Any) -> Any:
    return x.decode("latin1") if isinstance(x, bytes) else x


def read_pickle(path: Path) -> dict[str, Any]:
    """One CIFAR batch file as a dict with str keys (Python 2 pickles, bytes or str keys)."""
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, encoding="latin1").load()
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file") from e
    except Exception as e:  # truncated, corrupt or foreign pickles raise many types
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}, expected a dict")
    return {_str(k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    d = read_pickle(path)
    for key in ("data", label_key):
        if key not in d:
            raise DataError(f"{path}: no {key!r} entry (has {', '.join(map(str, d))})")
    data, labels = d["data"], np.asarray(d[label_key])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or (
        data.shape[1] != 3 * 32 * 32
    ):
        shape = getattr(data, "shape", None)
        raise DataError(
            f"{path}: 'data' is {type(data).__name__} {getattr(data, 'dtype', '')} of shape "
            f"{shape}, expected uint8 of shape (N, 3072)"
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{path}: {labels.shape} {labels.dtype} {label_key!r} for {len(data)} images"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{path}: labels span {labels.min()}..{labels.max()}, expected 0..{num_classes - 1}"
        )
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _read_split(folder: Path, names: tuple[str, ...], layout: _Layout, k: int) -> ArrayDataset:
    parts = [_read_batch(folder / n, layout.label_key, k) for n in names]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels))


def read_cifar(
    data_dir: str | Path | None = None, *, num_classes: int = 10, download: bool = False
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load CIFAR-10 or CIFAR-100 as ``(train, test)`` of ``(N, 3, 32, 32)`` uint8 images.

    ``data_dir`` is the folder holding ``cifar-10-batches-py/`` (``data_batch_1..5``,
    ``test_batch``, ``batches.meta``) or ``cifar-100-python/`` (``train``, ``test``, ``meta``;
    the 100 fine labels are used), as the official archives unpack; that folder itself is
    accepted too. Default: ``./data``. With ``download`` and no files found, fetches them through
    torchvision (needs network). Only trusted files should be read: the batches are pickles
    (loading is restricted to numpy arrays, which blocks the usual code-execution tricks).

    Raises:
        DataError: unknown ``num_classes``, files missing (naming the folders tried) or corrupt.
    """
    if num_classes not in LAYOUTS:
        raise DataError(f"CIFAR has 10 or 100 classes, not {num_classes}")
    layout = LAYOUTS[num_classes]
    bases = default_data_dir(f"cifar{num_classes}") if data_dir is None else [Path(data_dir)]
    needed = (*layout.train, layout.test)
    tried = []
    for base in bases:
        for folder in (base / layout.folder, base):
            missing = [n for n in needed if not (folder / n).is_file()]
            if not missing:
                train = _read_split(folder, layout.train, layout, num_classes)
                test = _read_split(folder, (layout.test,), layout, num_classes)
                train.class_names = test.class_names = _class_names(folder, layout, num_classes)
                return train, test
            tried.append(
                f"  {show(folder)}: "
                + ("no such folder" if not folder.is_dir() else "missing " + ", ".join(missing))
            )
    root = bases[0]
    if download:
        return _download(root, num_classes)
    raise DataError(
        f"CIFAR-{num_classes} files ({', '.join(needed)}) not found. Tried:\n"
        + "\n".join(tried)
        + f"\nUnpack {layout.url} into a folder and pass it as --data-dir (data.data_dir; the "
        f"default is ./data), or set data.download: true to fetch it through torchvision into "
        f"{show(root)} (needs network)."
    )


def _class_names(folder: Path, layout: _Layout, num_classes: int) -> list[str] | None:
    path = folder / layout.meta
    if not path.is_file():
        return None
    names = read_pickle(path).get(layout.names_key)
    if not isinstance(names, list | tuple) or len(names) != num_classes:
        raise DataError(f"{path}: no list of {num_classes} {layout.names_key!r}")
    return [str(_str(n)) for n in names]


def _download(root: Path, num_classes: int) -> tuple[ArrayDataset, ArrayDataset]:
    import torchvision.datasets

    cls = torchvision.datasets.CIFAR10 if num_classes == 10 else torchvision.datasets.CIFAR100
    splits = []
    for train in (True, False):
        try:
            ds = cls(str(root), train=train, download=True)
        except Exception as e:  # network, disk or checksum failures all end here
            raise DataError(
                f"downloading CIFAR-{num_classes} into {show(root)} through torchvision "
                f"failed: {e}"
            ) from e
        images = torch.from_numpy(np.ascontiguousarray(np.asarray(ds.data, np.uint8)))
        if images.dim() != 4 or tuple(images.shape[1:]) != (32, 32, 3):
            raise DataError(f"torchvision returned CIFAR images of shape {tuple(images.shape)}")
        labels = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
        classes = list(getattr(ds, "classes", [])) or None
        splits.append(ArrayDataset(images.permute(0, 3, 1, 2).contiguous(), labels, classes))
    return splits[0], splits[1]
