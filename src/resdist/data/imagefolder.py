"""ImageNet-style folders: ``data_dir/train/<class>/*.jpg`` and ``data_dir/val/<class>/*``."""

from __future__ import annotations

import copy
from pathlib import Path

from .errors import DataError
from .locations import default_data_dir, show
from .transforms import imagefolder_eval_transform, imagefolder_train_transform


def _image_folder(root: Path, transform):  # -> torchvision.datasets.ImageFolder
    from torchvision.datasets import ImageFolder

    if not root.is_dir():
        raise DataError(f"{show(root)}: no such folder")
    try:
        return ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, OSError) as e:
        # torchvision: "Couldn't find any class folder" / "Found no valid file for the classes"
        raise DataError(f"{show(root)}: {e}") from e


def read_imagefolder(
    data_dir: str | Path | None = None,
    *,
    image_size: int = 224,
    augment: bool = True,
    hflip: bool = True,
):  # -> tuple[ImageFolder, ImageFolder]
    """Load ``data_dir/train`` and ``data_dir/val`` as torchvision ``ImageFolder`` sets.

    Training images get a random-resized crop to ``image_size`` and a flip (none when
    ``augment`` is false: then they are treated like the validation images); validation images
    are resized to ``round(image_size * 256 / 224)`` and centre-cropped to ``image_size``. Both
    are normalised with the ImageNet mean and std. Class indices follow the sorted folder
    names, which must be the same in ``train`` and ``val``.

    Raises:
        DataError: a folder is missing, a class folder holds no image, or the class lists differ.
    """
    if image_size < 1:
        raise DataError(f"data.image_size must be >= 1, got {image_size}")
    if data_dir is None:
        candidates = default_data_dir("imagefolder")
        root = next((c for c in candidates if c.is_dir()), candidates[0])
    else:
        root = Path(data_dir)
    missing = [show(root / s) for s in ("train", "val") if not (root / s).is_dir()]
    if missing:
        raise DataError(
            f"ImageFolder data needs train/ and val/ class folders under {show(root)}; missing: "
            + ", ".join(missing)
            + ". Pass the folder that holds them with --data-dir (data.data_dir)."
        )
    train = _image_folder(root / "train",
                          imagefolder_train_transform(image_size, augment=augment, hflip=hflip))
    val = _image_folder(root / "val", imagefolder_eval_transform(image_size))
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(
            f"{show(root)}: train/ and val/ have different class folders "
            f"(only in train: {only_train[:5]}, only in val: {only_val[:5]})"
        )
    return train, val


def with_eval_transform(dataset, image_size: int):  # -> ImageFolder
    """A shallow copy of ``dataset`` (same file list, no rescan) with the evaluation transform,
    for a validation split carved out of the training folder."""
    view = copy.copy(dataset)
    view.transform = imagefolder_eval_transform(image_size)
    return view
