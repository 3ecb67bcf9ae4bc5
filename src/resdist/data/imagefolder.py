"""ImageNet-style folders: ``data_dir/train/<class>/*.jpg`` and ``data_dir/val/<class>/*``."""

from __future__ import annotations

import copy
import os
import sys
from functools import cache, partial
from pathlib import Path

from .contract import class_name_problem
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


def find_classes(root: Path) -> tuple[list[str], dict[str, int]]:
    """The class folders of an ImageFolder split, sorted, hidden ones (``.name``) left out, and
    their indices; a folder name that cannot be a class name is a :class:`DataError`."""
    classes = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"{show(root)}: no class folders inside; put each class's images in a "
                        "folder of its own (train/cat/1.jpg, train/dog/2.jpg, ...)")
    for name in classes:
        problem = class_name_problem(name)
        if problem:
            shown = repr(os.fsencode(name))[1:] if "not valid UTF-8" in problem else repr(name)
            raise DataError(f"{show(root)}: the class folder name {shown[:60]} {problem}; rename "
                            "the folder (class names go into checkpoints and exported models)")
    return classes, {name: i for i, name in enumerate(classes)}


def _visible_image(class_root: str, path: str) -> bool:
    """An image file (by suffix) that is not hidden and not inside a hidden folder."""
    from torchvision.datasets.folder import IMG_EXTENSIONS

    parts = Path(os.path.relpath(path, class_root)).parts
    return not any(p.startswith(".") for p in parts) and path.lower().endswith(IMG_EXTENSIONS)


def _check_listable(folder: Path) -> None:
    """Raise :class:`DataError` if ``folder`` cannot be listed (torchvision would skip it
    silently and then report "no valid file")."""
    try:
        with os.scandir(folder):
            pass
    except PermissionError as e:
        raise DataError(f"{show(folder)}: permission denied, so its images cannot be listed; "
                        "make the folder readable (chmod a+rx)") from e


@cache
def _folder_class():  # -> type[torchvision.datasets.ImageFolder]
    """The ``ImageFolder`` subclass below, built on first use (torchvision loads only then)."""
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    class _Folder(ImageFolder):
        """``ImageFolder`` that leaves hidden files and folders out (``.DS_Store``, macOS's
        ``._*`` twins, ``.ipynb_checkpoints``), refuses class folder names that cannot be class
        names and links to folders inside a class folder (followed, a link such as
        ``cat/up -> ..`` would bring every other class's images in as cats), and names an
        empty class folder."""

        def find_classes(self, directory):
            return find_classes(Path(directory))

        @staticmethod
        def make_dataset(directory, class_to_idx, extensions=None, is_valid_file=None,
                         allow_empty=False):
            for name in sorted(class_to_idx):
                _check_listable(Path(directory) / name)
                links = folder_links(Path(directory) / name)
                if links:
                    raise DataError(
                        f"{show(links[0])} is a link to the folder {os.readlink(links[0])}"
                        + (f" (and {len(links) - 1} more links)" if len(links) > 1 else "")
                        + "; resdist does not follow links to folders inside a class folder "
                        "(they can mix classes or loop); copy or link the images themselves")
            samples = ImageFolder.make_dataset(directory, class_to_idx, None,
                                               partial(_visible_image, directory), True)
            found = {t for _, t in samples}
            empty = sorted(name for name, i in class_to_idx.items() if i not in found)
            if empty:
                raise DataError(
                    f"{show(Path(directory) / empty[0])}: a class folder without image files "
                    f"({', '.join(IMG_EXTENSIONS)})"
                    + (f" (and {len(empty) - 1} more)" if len(empty) > 1 else "")
                    + "; add images or remove the folder")
            return samples

    # a module-level name, so that a DataLoader worker started by spawn or forkserver can
    # unpickle the dataset (see __getattr__ below)
    _Folder.__module__, _Folder.__qualname__ = __name__, "_Folder"
    return _Folder


def __getattr__(name: str):
    if name == "_Folder":
        return _folder_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _image_folder(root: Path, transform):  # -> torchvision.datasets.ImageFolder
    if not root.is_dir():
        raise DataError(f"{show(root)}: no such folder")
    try:
        return _folder_class()(str(root), transform=transform, loader=pil_loader)
    except (FileNotFoundError, OSError) as e:
        # torchvision: "Couldn't find any class folder" / "Found no valid file for the classes"
        raise DataError(f"{show(root)}: {e}") from e


def bad_images(paths: list[str]) -> list[tuple[str, str]]:
    """The files among ``paths`` that cannot be images: ``(path, reason)`` for each file that
    is empty, unreadable or that PIL cannot identify or verify. Cheap: a size check and PIL's
    header parse and ``verify()``, no decoding of the pixels, except for a JPEG file that does
    not end in JPEG's end marker (``verify()`` passes a JPEG cut short): it is decoded."""
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path in paths:
        try:
            if Path(path).stat().st_size == 0:
                bad.append((path, "empty file (0 bytes)"))
                continue
            with Image.open(path, formats=IMAGE_FORMATS) as im:
                kind = im.format
                im.verify()
            if kind == "JPEG" and not _ends_with_jpeg_marker(path):
                with Image.open(path) as im:
                    im.load()  # a file cut short fails here
        except Image.DecompressionBombError as e:
            bad.append((path, bomb_reason(e)))
        except UnidentifiedImageError:
            bad.append((path, f"not a readable image ({unreadable_reason()})"))
        except OSError as e:
            bad.append((path, e.strerror or str(e).split("\n")[0]))
        except Exception as e:  # verify() raises several types for corrupt data
            bad.append((path, f"corrupt image ({type(e).__name__})"))
    return bad


def _ends_with_jpeg_marker(path: str) -> bool:
    """Whether the file ends in JPEG's end-of-image marker (``FF D9``, zero padding allowed)."""
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - 64))
        return f.read().rstrip(b"\0").endswith(b"\xff\xd9")


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


def imagefolder_root(
    data_dir: str | Path | None, splits: tuple[str, ...] = ("train", "val")
) -> Path:
    """The folder holding an ImageFolder's ``splits`` (``data_dir``, or the default location),
    checked to have them.

    Raises:
        DataError: a split folder is missing; the message names ``--data-dir`` and, when the
            folder given is itself a split (``mydata/train``), the folder above it.
    """
    if data_dir is None:
        candidates = default_data_dir("imagefolder")
        root = next((c for c in candidates if c.is_dir()), candidates[0])
    else:
        root = Path(data_dir)
    missing = [show(root / s) for s in splits if not (root / s).is_dir()]
    if not missing:
        return root
    parent = root.absolute().parent
    if root.name in ("train", "val") and all((parent / s).is_dir() for s in splits):
        fix = f"--data-dir {show(parent)} (the folder above {root.name}/, which holds them)"
    else:
        fix = "--data-dir (data.data_dir) the folder that holds them"
    raise DataError(f"ImageFolder data needs {' and '.join(s + '/' for s in splits)} class "
                    f"folders under {show(root)}; missing: {', '.join(missing)}; pass {fix}")


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
    root = imagefolder_root(data_dir)
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


def read_imagefolder_split(
    data_dir: str | Path | None, split: str, prep: FolderPreprocessing,
    *, skip_bad_images: bool = False,
):  # -> ImageFolder
    """One split folder (``data_dir/split``, e.g. ``val``) with the evaluation transform, its
    files checked as :func:`read_imagefolder` checks them; the other split need not exist.

    Raises:
        DataError: the folder is missing (naming ``--data-dir``), holds no class folder, or an
            image file is bad (unless skipped).
    """
    root = imagefolder_root(data_dir, splits=(split,))
    dataset = _image_folder(root / split, prep.eval_transform())
    _check_images(dataset, root / split, skip_bad_images)
    return dataset


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


def image_size_note(paths: list[str], prep: FolderPreprocessing, samples: int = 32) -> str:
    """A one-line warning when the images at ``paths`` (up to ``samples`` evenly spaced ones,
    only their headers read) are smaller than the network input ``prep.image_size`` (they are
    upscaled: slow, and no detail is gained), or all of one size that the evaluation resize
    enlarges before its crop; else ``""``."""
    from PIL import Image

    n = len(paths)
    picks = sorted({int(i * n / min(n, samples)) for i in range(min(n, samples))})
    sizes = []
    for i in picks:
        try:
            with Image.open(paths[i]) as im:
                sizes.append(im.size)
        except Exception:  # noqa: BLE001 - unreadable files are reported by the image check
            continue
    if not sizes:
        return ""
    shorter = sorted(min(w, h) for w, h in sizes)
    typical = shorter[len(shorter) // 2]
    w, h = sizes[0]
    seen = (f"{w}x{h} (all {len(sizes)} sampled)" if len(set(sizes)) == 1 else
            f"about {typical} px on the shorter side (median of {len(sizes)} sampled)")
    size = prep.image_size
    if typical < size:
        return (f"warning: the training images are {seen}, smaller than the network input "
                f"data.image_size={size}: every image is upscaled (slow, and no detail is "
                f"gained); to train at their size pass --set data.image_size={typical} --set "
                "data.crop_pct=1.0")
    if len(set(sizes)) == 1 and typical < prep.eval_resize:
        return (f"warning: the training images are {seen}; data.image_size={size} with "
                f"data.crop_pct={prep.crop_pct:g} enlarges them to {prep.eval_resize} before the "
                f"centre crop; for images already at the network's size pass --set "
                "data.crop_pct=1.0")
    return ""

