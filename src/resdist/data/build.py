"""``build_data``: a :class:`~resdist.config.DataConfig` in, train/val/test loaders out."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import Subset

from ..config import DataConfig
from ..machine import available_cores
from .arrays import ArrayDataset
from .cifar import read_cifar
from .errors import DataError
from .fashion_mnist import read_fashion_mnist
from .imagefolder import (
    folder_statistics,
    image_size_note,
    read_imagefolder,
    with_eval_transform,
)
from .loaders import BatchLoader, InMemoryLoader, TorchLoader, check_rank
from .memory import check_fits
from .split import evenly_spaced, holdout_indices
from .synthetic import make_synthetic
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    DEFAULT_CROP_PADDING,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    SYNTHETIC_MEAN,
    SYNTHETIC_STD,
    FolderPreprocessing,
    Normalize,
    RandomCropFlip,
)

DATA_SEED = 0
"""Seed of the synthetic images: the data set stays the same whatever the run's seed."""


@dataclass
class DataBundle:
    """Everything a run needs from the data.

    Attributes:
        train: training batches (shuffled, augmented, sharded across ranks, last batch dropped).
        val: held-out validation batches (``data.val_split``), or None.
        test: test batches (for ImageFolder: the ``val/`` folder).
        num_classes: classifier outputs.
        in_chans: image channels (1 for Fashion-MNIST).
        image_size: height (= width) of the network input.
        class_names: class names when the data set has them.
        name: the data set (``data.name``).
        mean, std: the per-channel normalisation applied to the images, in [0, 1] pixel units.
        resize, interpolation: how evaluation images are resized (ImageFolder; None: they are
            used at their own size).
        notes: one-line warnings about the data (ImageFolder images smaller than the network
            input, ...) that ``train`` prints.
    """

    train: BatchLoader
    val: BatchLoader | None
    test: BatchLoader
    num_classes: int
    in_chans: int
    image_size: int
    class_names: list[str] | None
    name: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    resize: int | None = None  # ImageFolder: the shorter side before the centre crop
    interpolation: str = "bilinear"
    notes: list[str] = field(default_factory=list)  # warnings for the user (train prints them)


def default_workers() -> int:
    """DataLoader workers when ``data.num_workers`` is not set: one per available core, at most
    4 (more than the cores makes torch warn and the workers fight the training threads)."""
    return max(1, min(4, available_cores()))


def _read_arrays(
    cfg: DataConfig,
) -> tuple[ArrayDataset, ArrayDataset, Sequence[float], Sequence[float], int]:
    """``(train, test, mean, std, classes)`` of an in-memory data set (not ImageFolder)."""
    if cfg.name == "fashion-mnist":
        train, test = read_fashion_mnist(cfg.data_dir, download=cfg.download)
        mean, std = FASHION_MNIST_MEAN, FASHION_MNIST_STD
        num_classes = 10
    elif cfg.name in ("cifar10", "cifar100"):
        num_classes = 10 if cfg.name == "cifar10" else 100
        train, test = read_cifar(cfg.data_dir, num_classes=num_classes, download=cfg.download)
        mean, std = (CIFAR10_MEAN, CIFAR10_STD) if num_classes == 10 else (CIFAR100_MEAN,
                                                                           CIFAR100_STD)
    else:  # synthetic
        train, test = make_synthetic(
            samples=cfg.synthetic_samples, classes=cfg.synthetic_classes,
            size=cfg.synthetic_size, channels=cfg.synthetic_channels, seed=DATA_SEED,
        )
        mean = (SYNTHETIC_MEAN,) * cfg.synthetic_channels
        std = (SYNTHETIC_STD,) * cfg.synthetic_channels
        num_classes = cfg.synthetic_classes
    return train, test, mean, std, num_classes


def build_data(
    cfg: DataConfig,
    *,
    device: torch.device | str = "cpu",
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    shard_eval: bool = False,
) -> DataBundle:
    """Read the data set ``cfg`` names and wrap its splits in loaders.

    Order of operations: read train and test; keep the first ``limit_train`` / ``limit_test``
    images (ImageFolder: evenly spaced ones, as its files are listed class by class); carve
    ``val_split`` out of what is left of the training set (seeded, stratified, the same for
    every run seed); build the loaders. Fashion-MNIST, CIFAR and synthetic sets use
    :class:`InMemoryLoader` (kept on ``device`` when ``cfg.in_memory``, else in host memory);
    ImageFolder uses :class:`TorchLoader` with ``cfg.num_workers`` workers.

    Args:
        cfg: the data section of the run configuration.
        device: where batches are delivered (and in-memory sets kept).
        seed: shuffle and augmentation seed (ranks share it and so the permutation).
        rank, world_size: this process's place in a DDP job; training batches are sharded.
        shard_eval: also shard validation and test sets (disjoint, unpadded parts whose metric
            sums add up across ranks); by default every rank evaluates the whole set.

    Raises:
        DataError: unknown data set, missing or corrupt files, or impossible sizes/splits.
    """
    cfg.check(DataError)
    check_rank(rank, world_size)
    device = torch.device(device)
    if cfg.name == "imagefolder":
        return _build_imagefolder(cfg, device, seed, rank, world_size, shard_eval)

    train, test, mean, std, num_classes = _read_arrays(cfg)
    if cfg.mean is not None and cfg.std is not None:  # explicit statistics (an input contract's)
        if len(cfg.mean) != train.images.shape[1]:
            raise DataError(f"{cfg.name} images have {train.images.shape[1]} channels: "
                            f"data.mean/std need as many values, got {len(cfg.mean)}")
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    train, test = train.head(cfg.limit_train), test.head(cfg.limit_test)
    for split, part in (("training", train), ("test", test)):
        if len(part) == 0:
            raise DataError(f"the {cfg.name} {split} set is empty (0 images); check the files "
                            "under data.data_dir")
    val: ArrayDataset | None = None
    if cfg.val_split:
        train_idx, val_idx = holdout_indices(len(train), cfg.val_split, labels=train.labels)
        train, val = train.subset(train_idx), train.subset(val_idx)

    _, in_chans, height, _ = train.images.shape
    augment = None
    if cfg.augment:
        padding = cfg.crop_padding
        if padding is None:
            padding = DEFAULT_CROP_PADDING.get(cfg.name, max(1, height // 8))
        augment = RandomCropFlip(padding, flip=cfg.hflip)
    normalize = Normalize(mean, std)
    storage = None if cfg.in_memory else "cpu"
    common = dict(normalize=normalize, device=device, storage=storage, seed=seed, rank=rank,
                  world_size=world_size)

    def eval_loader(split: ArrayDataset) -> InMemoryLoader:
        return InMemoryLoader(split.images, split.labels, batch_size=cfg.eval_batch_size,
                              shard=shard_eval, even_shards=False, **common)

    return DataBundle(
        train=InMemoryLoader(train.images, train.labels, batch_size=cfg.batch_size,
                             augment=augment, shuffle=True, drop_last=True, shard=True, **common),
        val=None if val is None else eval_loader(val),
        test=eval_loader(test),
        num_classes=num_classes,
        in_chans=in_chans,
        image_size=height,
        class_names=train.class_names,
        name=cfg.name,
        mean=normalize.mean,
        std=normalize.std,
    )


def folder_preprocessing(cfg: DataConfig) -> FolderPreprocessing:
    """How ImageFolder images become inputs under ``cfg`` (``data.image_size``, ``crop_pct``,
    ``resize``, ``interpolation``, ``mean``/``std``, the training crop)."""
    if cfg.mean is not None and len(cfg.mean) != 3:
        raise DataError(f"ImageFolder images are RGB: data.mean/std need 3 values, got "
                        f"{len(cfg.mean)}")
    return FolderPreprocessing(
        cfg.image_size, crop_pct=cfg.crop_pct, resize=cfg.resize,
        interpolation=cfg.interpolation, train_crop=cfg.train_crop,
        crop_scale=tuple(cfg.crop_scale), hflip=cfg.hflip, augment=cfg.augment,
        crop_padding=cfg.crop_padding if cfg.crop_padding is not None else 4,
        **({"mean": tuple(cfg.mean), "std": tuple(cfg.std)} if cfg.mean is not None else {}))


def _build_imagefolder(
    cfg: DataConfig, device: torch.device, seed: int, rank: int, world_size: int,
    shard_eval: bool,
) -> DataBundle:
    prep = folder_preprocessing(cfg)
    batch = max(cfg.batch_size, cfg.eval_batch_size)
    check_fits(batch * 3 * cfg.image_size**2 * 4 * 2, f"a batch of {batch} images of "
               f"{cfg.image_size}x{cfg.image_size}", "lower data.image_size or the batch sizes")
    train_all, test = read_imagefolder(cfg.data_dir, skip_bad_images=cfg.skip_bad_images,
                                       prep=prep)
    if cfg.normalization == "dataset" and cfg.mean is None:
        mean, std = folder_statistics(train_all, prep)
        prep = replace(prep, mean=mean, std=std)
        train_all.transform, test.transform = prep.train_transform(), prep.eval_transform()
        print(f"data: mean {list(mean)}, std {list(std)} of the training folder", file=sys.stderr)
    keep = evenly_spaced(len(train_all), cfg.limit_train)
    train_idx, val_idx = keep, None
    if cfg.val_split:
        targets = torch.as_tensor(train_all.targets)[keep]
        tr, va = holdout_indices(len(keep), cfg.val_split, labels=targets)
        train_idx, val_idx = keep[tr], keep[va]
    workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
    common = dict(device=device, num_workers=workers, seed=seed, rank=rank,
                  world_size=world_size)
    train = TorchLoader(Subset(train_all, train_idx.tolist()), batch_size=cfg.batch_size,
                        shuffle=True, drop_last=True, **common)
    val = None
    if val_idx is not None:
        view = with_eval_transform(train_all, prep)
        val = TorchLoader(Subset(view, val_idx.tolist()), batch_size=cfg.eval_batch_size,
                          shard=shard_eval, **common)
    test_idx = evenly_spaced(len(test), cfg.limit_test)
    test_loader = TorchLoader(Subset(test, test_idx.tolist()), batch_size=cfg.eval_batch_size,
                              shard=shard_eval, **common)
    return DataBundle(
        train=train, val=val, test=test_loader, num_classes=len(train_all.classes), in_chans=3,
        image_size=cfg.image_size, class_names=list(train_all.classes), name=cfg.name,
        mean=prep.mean, std=prep.std, resize=prep.eval_resize, interpolation=prep.interpolation,
        notes=[n for n in [image_size_note([p for p, _ in train_all.samples], prep)] if n],
    )
