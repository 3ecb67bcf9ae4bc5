import dataclasses

import numpy as np
import pytest
import torch
from data_writers import write_cifar, write_fmnist

from resdist.config import DataConfig
from resdist.data import (
    DataBundle,
    DataError,
    InMemoryLoader,
    build_data,
    default_data_dir,
    make_synthetic,
)
from resdist.data.transforms import CIFAR100_MEAN, FASHION_MNIST_MEAN, FASHION_MNIST_STD


def _synthetic(**kw):
    base = dict(name="synthetic", synthetic_samples=120, synthetic_classes=4, synthetic_size=8,
                synthetic_channels=3, batch_size=16, eval_batch_size=32)
    base.update(kw)
    return DataConfig(**base)


def test_synthetic_bundle():
    bundle = build_data(_synthetic(), seed=1)
    assert isinstance(bundle, DataBundle) and bundle.val is None
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (4, 3, 8)
    assert bundle.name == "synthetic" and bundle.class_names[0] == "class_0"
    assert bundle.train.dataset_size == 120 and bundle.test.dataset_size == 30
    x, y = next(iter(bundle.train))
    assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert len(bundle.train) == 7 and len(bundle.test) == 1


def _val_labels_and_train_labels(bundle):
    val = torch.cat([y for _, y in bundle.val])
    train = torch.cat([y for _, y in bundle.train])
    return val, train


def test_val_split_disjoint_and_deterministic(tmp_path):
    write_fmnist(tmp_path, n_train=50, n_test=10)
    cfg = DataConfig(data_dir=str(tmp_path), val_split=0.2, batch_size=5, augment=False)
    bundle = build_data(cfg, seed=0)
    assert bundle.val.dataset_size == 10 and bundle.train.dataset_size == 40
    # Recognise the images themselves: every training image is distinct in this tiny set.
    def images(loader):
        return {tuple(x.flatten().tolist()) for xb, _ in loader for x in xb}
    val_imgs, train_imgs = images(bundle.val), images(bundle.train)
    assert len(val_imgs) == 10 and len(train_imgs) == 40 and not val_imgs & train_imgs
    assert images(build_data(cfg, seed=7).val) == val_imgs  # run seed does not move the split
    assert len(images(build_data(dataclasses.replace(cfg, val_split=25)).val)) == 25


def test_limits_apply_before_val_split():
    bundle = build_data(_synthetic(limit_train=60, limit_test=7, val_split=0.5))
    assert bundle.train.dataset_size == 30 and bundle.val.dataset_size == 30
    assert bundle.test.dataset_size == 7
    full_train, full_test = make_synthetic(samples=120, classes=4, size=8, channels=3)
    seen = torch.cat([y for _, y in bundle.test])
    assert torch.equal(seen, full_test.labels[:7])


def test_fashion_mnist_from_directory(tmp_path):
    arrays = write_fmnist(tmp_path / "f", gz=False, n_train=40, n_test=8)
    bundle = build_data(DataConfig(data_dir=str(tmp_path / "f"), batch_size=8))
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (10, 1, 28)
    assert bundle.mean == FASHION_MNIST_MEAN and bundle.class_names[0] == "T-shirt/top"
    x, y = next(iter(bundle.test))
    ref = (arrays["t10k-images-idx3-ubyte"] / 255 - FASHION_MNIST_MEAN[0]) / FASHION_MNIST_STD[0]
    np.testing.assert_allclose(x[:, 0].numpy(), ref, rtol=1e-5, atol=1e-5)
    assert bundle.train.augment.padding == 2 and bundle.train.augment.flip


def test_cifar_bundle_and_augment_options(tmp_path):
    write_cifar(tmp_path, 100)
    bundle = build_data(DataConfig(name="cifar100", data_dir=str(tmp_path), batch_size=8,
                                   crop_padding=3, hflip=False))
    assert (bundle.num_classes, bundle.in_chans, bundle.image_size) == (100, 3, 32)
    assert bundle.mean == CIFAR100_MEAN
    assert bundle.train.augment.padding == 3 and not bundle.train.augment.flip
    write_cifar(tmp_path, 10)
    bundle = build_data(DataConfig(name="cifar10", data_dir=str(tmp_path), batch_size=8))
    assert bundle.train.augment.padding == 4
    assert build_data(DataConfig(name="cifar10", data_dir=str(tmp_path), batch_size=8,
                                 augment=False)).train.augment is None


def test_ranks_and_shard_eval():
    cfg = _synthetic(synthetic_samples=100, limit_test=25)
    r0 = build_data(cfg, rank=0, world_size=2, shard_eval=True)
    r1 = build_data(cfg, rank=1, world_size=2, shard_eval=True)
    assert len(r0.train) == len(r1.train) == 3  # 50 each, batch 16
    assert r0.train.num_samples == 48
    assert not set(r0.train.indices().tolist()) & set(r1.train.indices().tolist())
    assert r0.test.num_samples + r1.test.num_samples == 25
    full = build_data(cfg, rank=1, world_size=2)
    assert full.test.num_samples == 25


def test_in_memory_false_keeps_host_copy():
    bundle = build_data(_synthetic(in_memory=False))
    assert isinstance(bundle.train, InMemoryLoader)
    assert bundle.train.images.device.type == "cpu"
    assert next(iter(bundle.train))[0].shape == (16, 3, 8, 8)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"name": "mnist"}, "unknown data set"),
        ({"val_split": 120}, "leaving none to train on"),
        ({"val_split": 0.99, "batch_size": 8}, "fewer than the batch size"),
        ({"batch_size": 0}, "batch_size"),
        ({"limit_train": 0}, "limit_train"),
        ({"crop_padding": -1}, "crop_padding"),
    ],
)
def test_bad_config_is_one_data_error(kw, message):
    with pytest.raises(DataError, match=message):
        build_data(_synthetic(**kw))


def test_missing_dataset_directory(tmp_path):
    with pytest.raises(DataError) as err:
        build_data(DataConfig(data_dir=str(tmp_path / "absent")))
    assert str((tmp_path / "absent").absolute()) in str(err.value)
    with pytest.raises(DataError, match="unknown data set"):
        default_data_dir("svhn")
    assert default_data_dir("cifar10")[0].name == "data"
