import gzip
from pathlib import Path

import numpy as np
import pytest
import torch
from data_writers import fmnist_arrays, write_fmnist, write_idx

from resdist.data import DataError, read_fashion_mnist, read_idx
from resdist.data.locations import DEBIAN_FASHION_MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_roundtrip(tmp_path, gz):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    path = write_idx(tmp_path / ("a.gz" if gz else "a"), array, gz=gz)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 5)
    np.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_split_files_exactly(tmp_path, gz):
    arrays = write_fmnist(tmp_path, gz=gz)
    train, test = read_fashion_mnist(tmp_path)
    assert train.images.shape == (20, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (8, 1, 28, 28)
    assert train.labels.dtype == torch.int64
    np.testing.assert_array_equal(train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    assert train.images[3, 0, 7, 21] == int(arrays["train-images-idx3-ubyte"][3, 7, 21])
    assert train.class_names[9] == "Ankle boot"


def test_torchvision_layout_and_mixed_compression(tmp_path):
    raw = tmp_path / "FashionMNIST" / "raw"
    arrays = write_fmnist(raw, gz=False)
    (raw / "t10k-images-idx3-ubyte").unlink()
    write_idx(raw / "t10k-images-idx3-ubyte.gz", arrays["t10k-images-idx3-ubyte"], gz=True)
    train, test = read_fashion_mnist(tmp_path)
    np.testing.assert_array_equal(test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert len(train) == 20


def _corrupt(folder: Path, stem: str, payload: bytes) -> Path:
    path = folder / (stem + ".gz")
    path.write_bytes(gzip.compress(payload))
    return path


def _header(*dims, magic=b"\0\0\x08"):
    return magic + bytes([len(dims)]) + b"".join(d.to_bytes(4, "big") for d in dims)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x12\x34\x08\x03" + bytes(100), "bad magic"),
        (_header(20, 28, 28) + bytes(20 * 28 * 28 - 5), "truncated"),
        (_header(20, 28, 28)[:9], "truncated inside the header"),
        (_header(20, 28, 28, magic=b"\0\0\x0d") + bytes(20 * 28 * 28 * 4), "element type 0x0d"),
        (_header(20 * 28 * 28) + bytes(20 * 28 * 28), "expected 3-d images"),
        (b"\0\0", "too short"),
    ],
)
def test_corrupt_image_file_names_file(fmnist_dir, payload, message):
    folder, _ = fmnist_dir
    path = _corrupt(folder, "train-images-idx3-ubyte", payload)
    with pytest.raises(DataError, match=message) as err:
        read_fashion_mnist(folder)
    assert str(path) in str(err.value)


def test_truncated_gzip_stream(fmnist_dir):
    folder, _ = fmnist_dir
    path = folder / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DataError, match="decompress") as err:
        read_fashion_mnist(folder)
    assert str(path) in str(err.value)


def test_label_count_and_range_checked(tmp_path):
    arrays = write_fmnist(tmp_path, gz=False)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, arrays["train-labels-idx1-ubyte"][:-1])
    with pytest.raises(DataError, match="19 labels for the 20 images") as err:
        read_fashion_mnist(tmp_path)
    assert str(labels) in str(err.value)
    bad = arrays["train-labels-idx1-ubyte"].copy()
    bad[4] = 12
    write_idx(labels, bad)
    with pytest.raises(DataError, match="label 12 at index 4"):
        read_fashion_mnist(tmp_path)


def test_missing_files_list_every_folder_tried(tmp_path):
    (tmp_path / "partial").mkdir()
    write_idx(tmp_path / "partial" / "train-images-idx3-ubyte", np.zeros((1, 2, 2), np.uint8))
    with pytest.raises(DataError) as err:
        read_fashion_mnist(tmp_path / "partial")
    msg = str(err.value)
    assert str((tmp_path / "partial").absolute()) in msg
    assert str((tmp_path / "partial" / "FashionMNIST" / "raw").absolute()) in msg
    assert "missing train-labels-idx1-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "download" in msg


class _FakeFashionMNIST:
    calls: list = []

    def __init__(self, root, train=True, download=False):
        type(self).calls.append((root, train, download))
        n = 12 if train else 4
        arrays = fmnist_arrays(n_train=12, n_test=4)
        key = "train" if train else "t10k"
        self.data = torch.from_numpy(arrays[f"{key}-images-idx3-ubyte"][:n])
        self.targets = torch.from_numpy(arrays[f"{key}-labels-idx1-ubyte"][:n]).long()


def test_download_falls_back_to_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets

    _FakeFashionMNIST.calls = []
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", _FakeFashionMNIST)
    with pytest.raises(DataError):
        read_fashion_mnist(tmp_path / "dl")
    assert _FakeFashionMNIST.calls == []
    train, test = read_fashion_mnist(tmp_path / "dl", download=True)
    assert _FakeFashionMNIST.calls == [(str(tmp_path / "dl"), True, True),
                                       (str(tmp_path / "dl"), False, True)]
    assert train.images.shape == (12, 1, 28, 28) and test.images.shape == (4, 1, 28, 28)
    np.testing.assert_array_equal(
        train.images[:, 0].numpy(), fmnist_arrays(12, 4)["train-images-idx3-ubyte"]
    )


def test_download_failure_is_a_data_error(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError, match="downloading Fashion-MNIST.*failed"):
        read_fashion_mnist(tmp_path, download=True)


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="dataset-fashion-mnist not installed")
def test_real_debian_files():
    train, test = read_fashion_mnist()
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
