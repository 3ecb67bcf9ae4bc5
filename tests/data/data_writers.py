"""Writers for tiny data sets in the exact on-disk formats, built inside ``tmp_path``."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    """An IDX file: 0x0000, type 0x08 (ubyte), ndim, big-endian uint32 dims, raw bytes."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    payload = header + array.tobytes()
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def fmnist_arrays(n_train: int = 20, n_test: int = 8, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test)[::-1] % 10).astype(np.uint8),
    }


def write_fmnist(folder: Path, *, gz: bool = True, **kw) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    arrays = fmnist_arrays(**kw)
    for stem, array in arrays.items():
        write_idx(folder / (stem + ".gz" if gz else stem), array, gz=gz)
    return arrays


def dump_py2_style(path: Path, obj: dict) -> None:
    """Protocol 2 with bytes keys/strings, which is what Python 2 pickles decode to with
    encoding='bytes' and what the CIFAR reader must accept."""
    path.write_bytes(pickle.dumps(obj, protocol=2))


def write_cifar(root: Path, num_classes: int = 10, per_batch: int = 6, n_test: int = 5,
                seed: int = 0) -> dict[str, np.ndarray]:
    """The folder the official python archive unpacks to, under ``root``."""
    rng = np.random.default_rng(seed)
    if num_classes == 10:
        folder = root / "cifar-10-batches-py"
        train_names, test_name, meta_name = [f"data_batch_{i}" for i in range(1, 6)], \
            "test_batch", "batches.meta"
        label_key, names_key = b"labels", b"label_names"
    else:
        folder = root / "cifar-100-python"
        train_names, test_name, meta_name = ["train"], "test", "meta"
        per_batch *= 5
        label_key, names_key = b"fine_labels", b"fine_label_names"
    folder.mkdir(parents=True)
    train_data, train_labels = [], []
    for name in train_names:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, per_batch)]
        batch = {b"batch_label": b"training batch", b"data": data, label_key: labels,
                 b"filenames": [b"img%d.png" % i for i in range(per_batch)]}
        if num_classes == 100:
            batch[b"coarse_labels"] = [v // 5 for v in labels]
        dump_py2_style(folder / name, batch)
        train_data.append(data)
        train_labels += labels
    test_data = rng.integers(0, 256, (n_test, 3072), dtype=np.uint8)
    test_labels = [int(v) for v in rng.integers(0, num_classes, n_test)]
    dump_py2_style(folder / test_name, {b"data": test_data, label_key: test_labels})
    names = [b"name%d" % i for i in range(num_classes)]
    dump_py2_style(folder / meta_name, {names_key: names, b"num_cases_per_batch": per_batch})
    return {
        "folder": folder,
        "train_data": np.concatenate(train_data),
        "train_labels": np.array(train_labels),
        "test_data": test_data,
        "test_labels": np.array(test_labels),
    }


def write_imagefolder(root: Path, num_classes: int = 4, n_train: int = 4, n_val: int = 2,
                      size: int = 40, ext: str = "JPEG", seed: int = 0) -> list[str]:
    """An ImageNet-style tree under ``root``: ``train/<wnid>/<wnid>_<i>.<ext>`` and
    ``val/<wnid>/...`` with WordNet-id-like class folders (``n00000000``, ...) and random-pixel
    images of varying size. As in ILSVRC, a few images are not RGB: the first image of every
    split is greyscale. Returns the class folder names in index order (sorted)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    classes = [f"n{c:08d}" for c in range(num_classes)]
    for split, count in (("train", n_train), ("val", n_val)):
        for c, wnid in enumerate(classes):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                height, width = size + (i % 3), size + 2 * (i % 2)
                pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
                img = Image.fromarray(pixels, "RGB")
                if c == 0 and i == 0:
                    img = img.convert("L")
                img.save(folder / f"{wnid}_{i}.{ext}")
    return classes


def write_checkpoint(path, model_name, model_kwargs, *, model=None, input_shape=None,
                     data="synthetic", config=None, **fields):
    """A resdist checkpoint of ``model`` (default: a fresh ``create_model``) with the contract
    of a ``data`` network of ``input_shape`` (default: ``in_chans`` x 16 x 16)."""
    from resdist.data.contract import contract_for_data
    from resdist.engine.checkpoint import Checkpoint
    from resdist.models import create_model

    model = model if model is not None else create_model(model_name, **model_kwargs)
    c, h, _ = input_shape or (model_kwargs.get("in_chans", 3), 16, 16)
    contract = contract_for_data(data, in_chans=c, image_size=h,
                                 num_classes=model_kwargs.get("num_classes"))
    return Checkpoint(model_name, dict(model_kwargs), model.state_dict(), contract=contract,
                      config=config, **fields).save(path)
