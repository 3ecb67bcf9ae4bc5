"""Fashion-MNIST from its IDX files (gzipped or not), parsed with numpy."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from .arrays import ArrayDataset
from .errors import DataError
from .locations import default_data_dir, show

CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (gzipped or raw) into a uint8 array of the shape its header gives.

    Layout: two zero bytes, the element type (0x08: unsigned byte, the only one MNIST-style
    sets use), the number of dimensions, one big-endian uint32 per dimension, then the data.

    Raises:
        DataError: naming the file, if it cannot be read, is not IDX, or is truncated.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file") from e
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read or decompress it ({e})") from e
    if len(raw) < 4:
        raise DataError(f"{path}: {len(raw)} bytes, too short for an IDX header")
    magic = int.from_bytes(raw[:4], "big")
    if raw[:2] != b"\0\0" or raw[3] == 0:
        raise DataError(f"{path}: bad magic number 0x{magic:08x}, not an IDX file")
    if raw[2] != _UBYTE:
        raise DataError(
            f"{path}: element type 0x{raw[2]:02x}, expected 0x08 (unsigned byte)"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated inside the header ({len(raw)} bytes)")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    expected = int(np.prod(dims, dtype=np.int64))
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "has trailing bytes"
        raise DataError(
            f"{path}: {what}: the header gives shape {dims} ({expected} bytes of data) "
            f"but the file holds {found}"
        )
    return np.frombuffer(raw, np.uint8, expected, header).reshape(dims).copy()


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _candidates(data_dir: str | Path | None) -> list[Path]:
    bases = default_data_dir("fashion-mnist") if data_dir is None else [Path(data_dir)]
    folders = []
    for base in bases:
        folders += [base, base / "FashionMNIST" / "raw"]
    return folders


def _read_split(images_path: Path, labels_path: Path) -> ArrayDataset:
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3:
        raise DataError(
            f"{images_path}: holds a {images.ndim}-d array of shape {images.shape}, "
            "expected 3-d images (N, H, W); is it a label file?"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path}: holds a {labels.ndim}-d array of shape {labels.shape}, "
            "expected 1-d labels (N,); is it an image file?"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{labels_path}: {len(labels)} labels for the {len(images)} images in {images_path}"
        )
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        bad = int(np.argmax(labels >= len(CLASS_NAMES)))
        raise DataError(
            f"{labels_path}: label {labels[bad]} at index {bad} is outside 0..{len(CLASS_NAMES) - 1}"
        )
    return ArrayDataset(
        torch.from_numpy(images).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        list(CLASS_NAMES),
    )


def read_fashion_mnist(
    data_dir: str | Path | None = None, *, download: bool = False
) -> tuple[ArrayDataset, ArrayDataset]:
    """Load Fashion-MNIST as ``(train, test)``: 60000 and 10000 ``(N, 1, 28, 28)`` uint8 images.

    Looks for the four IDX files (``train-images-idx3-ubyte[.gz]`` etc.) in ``data_dir`` and in
    torchvision's layout ``data_dir/FashionMNIST/raw``; without ``data_dir``, in Debian's
    ``/usr/share/datasets/fashion-mnist`` and then ``./data``. With ``download`` and no files
    found, fetches them through ``torchvision.datasets.FashionMNIST`` (needs network).

    Raises:
        DataError: files missing (naming every folder tried and how to get the data) or corrupt.
    """
    tried = []
    for folder in _candidates(data_dir):
        stems = [stem for pair in FILES.values() for stem in pair]
        found = {stem: _find_file(folder, stem) for stem in stems}
        missing = [stem for stem, path in found.items() if path is None]
        if not missing:
            (train_img, train_lab), (test_img, test_lab) = FILES.values()
            train = _read_split(found[train_img], found[train_lab])
            return train, _read_split(found[test_img], found[test_lab])
        tried.append(
            f"  {show(folder)}: "
            + ("no such folder" if not folder.is_dir() else "missing " + ", ".join(missing))
        )
    root = Path(data_dir) if data_dir is not None else default_data_dir("fashion-mnist")[-1]
    if download:
        return _download(root)
    raise DataError(
        "Fashion-MNIST IDX files (train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, each optionally .gz) not found. "
        "Tried:\n" + "\n".join(tried) + "\n"
        "Get them with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), point "
        "--data-dir (data.data_dir) at a folder holding them, or set data.download: true to "
        f"fetch them through torchvision into {show(root)} (needs network)."
    )


def _download(root: Path) -> tuple[ArrayDataset, ArrayDataset]:
    import torchvision.datasets

    splits = []
    for train in (True, False):
        try:
            ds = torchvision.datasets.FashionMNIST(str(root), train=train, download=True)
        except Exception as e:  # network, disk or checksum failures all end here
            raise DataError(
                f"downloading Fashion-MNIST into {show(root)} through torchvision failed: {e}"
            ) from e
        images = torch.as_tensor(ds.data, dtype=torch.uint8).unsqueeze(1)
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        splits.append(ArrayDataset(images, labels, list(CLASS_NAMES)))
    return splits[0], splits[1]
