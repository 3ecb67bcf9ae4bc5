"""ImageNet-style folders: ``data_dir/train/<class>/*.jpg`` and ``data_dir/val/<class>/*``."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

from .errors import DataError
from .images import IMAGE_FORMATS, bomb_reason, pil_loader, unreadable_reason
from .locations import default_data_dir, show
from .transforms import FolderPreprocessing


def folder_links(class_dir: str | os.PathLike) -> list[Path]:
    """The links to folders inside ``class_dir`` (not below one: a link is not followed). A
    class folder that is itself a link is fine; links to single files are too."""
    found = []
    for here, dirs, _ in os.walk(class_dir, followlinks=False):
        found += [Path(here) / d for d in dirs if os.path.islink(os.path.join(here, d))]
    return sorted(found)


def _check_listable(folder: Path) -> None:
    """Raise :class:`DataError` if ``folder`` cannot be listed (torchvision would skip it
    silently and then report "no valid file")."""
    try:
        with os.scandir(folder):
            pass
    except PermissionError as e:
        raise DataError(f"{show(folder)}: permission denied, so its images cannot be listed; "
                        "make the folder readable (chmod a+rx)") from e


def _image_folder(root: Path, transform):  # -> torchvision.datasets.ImageFolder
    from torchvision.datasets import ImageFolder

    class _Folder(ImageFolder):
        """``ImageFolder`` that refuses links to folders inside a class folder: followed, a link
        such as ``cat/up -> ..`` would bring every other class's images in as cats."""

        @staticmethod
        def make_dataset(directory, class_to_idx, *args, **kwargs):
            for name in sorted(class_to_idx):
                _check_listable(Path(directory) / name)
                links = folder_links(Path(directory) / name)
                if links:
                    raise DataError(
                        f"{show(links[0])} is a link to the folder {os.readlink(links[0])}"
                        + (f" (and {len(links) - 1} more links)" if len(links) > 1 else "")
                        + "; resdist does not follow links to folders inside a class folder "
                        "(they can mix classes or loop); copy or link the images themselves")
            return ImageFolder.make_dataset(directory, class_to_idx, *args, **kwargs)

    if not root.is_dir():
        raise DataError(f"{show(root)}: no such folder")
    try:
        return _Folder(str(root), transform=transform, loader=pil_loader)
    except (FileNotFoundError, OSError) as e:
        # torchvision: "Couldn't find any class folder" / "Found no valid file for the classes"
        raise DataError(f"{show(root)}: {e}") from e


def bad_images(paths: list[str]) -> list[tuple[str, str]]:
    """The files among ``paths`` that cannot be images: ``(path, reason)`` for each file that
    is empty, unreadable or that PIL cannot identify or verify. Cheap: a size check and PIL's
    header parse and ``verify()``, no decoding of the pixels."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path in paths:
        try:
            if Path(path).stat().st_size == 0:
                bad.append((path, "empty file (0 bytes)"))
                continue
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                im.verify()
        except Image.DecompressionBombError as e:
            bad.append((path, bomb_reason(e)))
        except UnidentifiedImageError:
            bad.append((path, f"not a readable image ({unreadable_reason()})"))
        except OSError as e:
            bad.append((path, e.strerror or str(e).split("\n")[0]))
        except Exception as e:  # verify() raises several types for corrupt data
            bad.append((path, f"corrupt image ({type(e).__name__})"))
    return bad


def _check_images(dataset, root: Path, skip: bool) -> None:
    """Refuse (or, with ``skip``, leave out and count) the unreadable files of ``dataset``."""
    bad = bad_images([p for p, _ in dataset.samples])
    if not bad:
        return
    first, reason = bad[0]
    if not skip:
        raise DataError(
            f"{first}: {reason}" + (f" (and {len(bad) - 1} more bad files under {show(root)})"
                                    if len(bad) > 1 else "")
            + "; replace or remove it, or leave such files out with "
            "--set data.skip_bad_images=true"
        )
    drop = {p for p, _ in bad}
    dataset.samples = [s for s in dataset.samples if s[0] not in drop]
    dataset.imgs = dataset.samples
    dataset.targets = [t for _, t in dataset.samples]
    print(f"data: left out {len(bad)} unreadable image files under {show(root)} "
          f"(first: {first}: {reason})", file=sys.stderr)
    if not dataset.samples:
        raise DataError(f"{show(root)}: no readable image left after leaving out {len(bad)} "
                        "bad files")


def read_imagefolder(
    data_dir: str | Path | None = None,
    *,
    image_size: int = 224,
    augment: bool = True,
    hflip: bool = True,
    skip_bad_images: bool = False,
    prep: FolderPreprocessing | None = None,
):  # -> tuple[ImageFolder, ImageFolder]
    """Load ``data_dir/train`` and ``data_dir/val`` as torchvision ``ImageFolder`` sets.

    ``prep`` says how images become inputs (:class:`~resdist.data.transforms.
    FolderPreprocessing`); by default ImageNet's rules at ``image_size``: training images get a
    random-resized crop and a flip (none when ``augment`` is false: then they are treated like
    the validation images), validation images are resized to ``round(image_size * 256 / 224)``
    and centre-cropped, both normalised with the ImageNet mean and std. Class indices follow
    the sorted folder names, which must be the same in ``train`` and ``val``.

    Every file is checked before training starts (:func:`bad_images`): an empty or unreadable
    one is an error naming it, or, with ``skip_bad_images``, is left out and counted.

    Raises:
        DataError: a folder is missing, a class folder holds no image, an image file is bad
            (unless skipped), or the class lists differ.
    """
    prep = prep or FolderPreprocessing(image_size, augment=augment, hflip=hflip)
    if prep.image_size < 1:
        raise DataError(f"data.image_size must be >= 1, got {prep.image_size}")
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
    train = _image_folder(root / "train", prep.train_transform())
    val = _image_folder(root / "val", prep.eval_transform())
    for split, dataset in (("train", train), ("val", val)):
        _check_images(dataset, root / split, skip_bad_images)
    if train.classes != val.classes:
        only_train = sorted(set(train.classes) - set(val.classes))
        only_val = sorted(set(val.classes) - set(train.classes))
        raise DataError(
            f"{show(root)}: train/ and val/ have different class folders "
            f"(only in train: {only_train[:5]}, only in val: {only_val[:5]})"
        )
    return train, val


def with_eval_transform(dataset, prep: FolderPreprocessing, normalize: bool = True):
    """A shallow copy of ``dataset`` (same file list, no rescan) with the evaluation transform,
    for a validation split carved out of the training folder (or, without ``normalize``, for
    measuring the folder's mean and std). Returns an ``ImageFolder``."""
    view = copy.copy(dataset)
    view.transform = prep.eval_transform(normalize=normalize)
    return view


def folder_statistics(dataset, prep: FolderPreprocessing, max_images: int = 2000
                      ) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1] units) of up to ``max_images`` evenly spaced
    training images, prepared as for evaluation (resize, centre crop)."""
    import torch

    view = with_eval_transform(dataset, prep, normalize=False)
    n = len(view)
    picks = sorted({int(i * n / min(n, max_images)) for i in range(min(n, max_images))})
    total = torch.zeros(3, dtype=torch.float64)
    squares = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    for i in picks:
        x = view[i][0].double()
        total += x.sum((1, 2))
        squares += (x * x).sum((1, 2))
        pixels += x.shape[1] * x.shape[2]
    mean = total / pixels
    std = (squares / pixels - mean * mean).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 4) for v in mean), tuple(round(float(v), 4) for v in std)
