import pickle

import numpy as np
import pytest
import torch
from data_writers import write_cifar

from resdist.data import DataError, read_cifar


def test_cifar10_pixels_and_labels_exact(cifar10_root):
    root, ref = cifar10_root
    train, test = read_cifar(root, num_classes=10)
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (5, 3, 32, 32)
    # Row layout: 1024 red, then 1024 green, then 1024 blue values, each row-major 32 x 32.
    i, c, y, x = 13, 2, 5, 30
    assert train.images[i, c, y, x] == ref["train_data"][i, c * 1024 + y * 32 + x]
    np.testing.assert_array_equal(train.images.reshape(30, -1).numpy(), ref["train_data"])
    np.testing.assert_array_equal(train.labels.numpy(), ref["train_labels"])
    np.testing.assert_array_equal(test.images.reshape(5, -1).numpy(), ref["test_data"])
    assert train.class_names == [f"name{i}" for i in range(10)]


def test_cifar10_known_pixel(tmp_path):
    ref = write_cifar(tmp_path, 10)
    path = ref["folder"] / "data_batch_2"
    batch = pickle.loads(path.read_bytes())
    batch[b"data"][1, 1 * 1024 + 31 * 32 + 0] = 77  # image 1 of batch 2: green, y=31, x=0
    batch[b"data"][1, 2 * 1024 + 31 * 32 + 0] = 201
    path.write_bytes(pickle.dumps(batch, protocol=2))
    train, _ = read_cifar(tmp_path)
    assert train.images[6 + 1, 1, 31, 0] == 77 and train.images[6 + 1, 2, 31, 0] == 201


def test_cifar100_uses_fine_labels(tmp_path):
    ref = write_cifar(tmp_path, 100)
    train, test = read_cifar(tmp_path, num_classes=100)
    np.testing.assert_array_equal(train.labels.numpy(), ref["train_labels"])
    np.testing.assert_array_equal(test.images.reshape(len(test), -1).numpy(), ref["test_data"])
    assert len(train.class_names) == 100


def test_batches_folder_itself_and_str_keys(tmp_path):
    ref = write_cifar(tmp_path, 10)
    folder = ref["folder"]
    test = pickle.loads((folder / "test_batch").read_bytes())
    (folder / "test_batch").write_bytes(
        pickle.dumps({k.decode(): v for k, v in test.items()}, protocol=2)
    )
    _, out = read_cifar(folder)
    np.testing.assert_array_equal(out.labels.numpy(), ref["test_labels"])


def test_python2_numpy_module_name_accepted(tmp_path):
    ref = write_cifar(tmp_path, 10)
    path = ref["folder"] / "test_batch"
    blob = path.read_bytes()
    assert b"numpy._core.multiarray\n_reconstruct" in blob
    path.write_bytes(blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    _, test = read_cifar(tmp_path)
    np.testing.assert_array_equal(test.images.reshape(5, -1).numpy(), ref["test_data"])


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "not a readable CIFAR pickle"),
        (lambda p: p.write_bytes(pickle.dumps({b"data": _Evil()}, 2)), "refusing to load"),
        (lambda p: p.write_bytes(pickle.dumps({b"labels": [1]}, 2)), "no 'data' entry"),
        (lambda p: p.write_bytes(pickle.dumps(
            {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, 2)), r"\(N, 3072\)"),
        (lambda p: p.write_bytes(pickle.dumps(
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, 2)), "labels span"),
        (lambda p: p.write_bytes(pickle.dumps(
            {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, 2)), "for 2 images"),
    ],
)
def test_corrupt_batch_names_file(cifar10_root, mutate, message):
    root, ref = cifar10_root
    path = ref["folder"] / "data_batch_3"
    mutate(path)
    with pytest.raises(DataError, match=message) as err:
        read_cifar(root)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("names", [5, None, "airplane", [b"a"] * 9])
def test_a_strangers_class_names_file_is_one_error(cifar10_root, names):
    root, ref = cifar10_root
    path = ref["folder"] / "batches.meta"
    path.write_bytes(pickle.dumps({b"label_names": names}, 2))
    with pytest.raises(DataError, match="no list of 10 'label_names'") as err:
        read_cifar(root)
    assert str(path) in str(err.value)


def test_missing_files(tmp_path):
    with pytest.raises(DataError) as err:
        read_cifar(tmp_path / "nowhere", num_classes=100)
    msg = str(err.value)
    assert str((tmp_path / "nowhere" / "cifar-100-python").absolute()) in msg
    assert "cifar-100-python.tar.gz" in msg and "download" in msg
    ref = write_cifar(tmp_path, 10)
    (ref["folder"] / "data_batch_5").unlink()
    with pytest.raises(DataError, match="missing data_batch_5"):
        read_cifar(tmp_path)
    with pytest.raises(DataError, match="10 or 100"):
        read_cifar(tmp_path, num_classes=20)


@pytest.mark.parametrize("num_classes", [10, 100])
def test_download_falls_back_to_torchvision(tmp_path, monkeypatch, num_classes):
    import torchvision.datasets

    calls = []
    rng = np.random.default_rng(1)
    hwc = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)

    class FakeCIFAR:
        def __init__(self, root, train=True, download=False):
            calls.append((root, train, download))
            self.data = hwc
            self.targets = [0, 1, 2, 3]
            self.classes = [f"c{i}" for i in range(num_classes)]

    monkeypatch.setattr(torchvision.datasets, f"CIFAR{num_classes}", FakeCIFAR)
    train, test = read_cifar(tmp_path, num_classes=num_classes, download=True)
    assert calls == [(str(tmp_path), True, True), (str(tmp_path), False, True)]
    assert train.images.shape == (4, 3, 32, 32)
    assert train.images[2, 1, 10, 20] == hwc[2, 10, 20, 1]
    assert train.labels.tolist() == [0, 1, 2, 3] and train.class_names[3] == "c3"
