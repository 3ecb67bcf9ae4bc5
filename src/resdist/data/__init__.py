"""Data: Fashion-MNIST, CIFAR-10/100, ImageNet-style folders and a synthetic set.

``build_data(cfg.data, device=...)`` returns a :class:`DataBundle` of loaders that yield
normalised float32 ``(images, labels)`` batches on the device. The readers
(``read_fashion_mnist``, ``read_cifar``, ``read_imagefolder``, ``make_synthetic``) can be used on
their own; every user error (missing or corrupt files, bad sizes) is a :class:`DataError`.
"""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    ".arrays": ("ArrayDataset",),
    ".build": ("DataBundle", "build_data"),
    ".cifar": ("read_cifar",),
    ".errors": ("DataError",),
    ".fashion_mnist": ("read_fashion_mnist", "read_idx"),
    ".imagefolder": ("read_imagefolder",),
    ".loaders": ("BatchLoader", "InMemoryLoader", "TorchLoader", "shard_indices"),
    ".locations": ("DATASET_NAMES", "default_data_dir"),
    ".split": ("holdout_indices", "val_count"),
    ".synthetic": ("make_synthetic",),
    ".transforms": ("Normalize", "RandomCropFlip"),
}

__all__ = [
    "DATASET_NAMES",
    "ArrayDataset",
    "BatchLoader",
    "DataBundle",
    "DataError",
    "InMemoryLoader",
    "Normalize",
    "RandomCropFlip",
    "TorchLoader",
    "build_data",
    "default_data_dir",
    "holdout_indices",
    "make_synthetic",
    "read_cifar",
    "read_fashion_mnist",
    "read_idx",
    "read_imagefolder",
    "shard_indices",
    "val_count",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers; at run time each name is imported on first use
    from .arrays import ArrayDataset
    from .build import DataBundle, build_data
    from .cifar import read_cifar
    from .errors import DataError
    from .fashion_mnist import read_fashion_mnist, read_idx
    from .imagefolder import read_imagefolder
    from .loaders import BatchLoader, InMemoryLoader, TorchLoader, shard_indices
    from .locations import DATASET_NAMES, default_data_dir
    from .split import holdout_indices, val_count
    from .synthetic import make_synthetic
    from .transforms import Normalize, RandomCropFlip
