"""From an input contract to the images a model is scored or calibrated on: :func:`eval_data`.

Every consumer that feeds a trained network its data set (``resdist eval`` of a checkpoint, a
state dict or any exported file, INT8 calibration) goes through :func:`eval_data`, so the same
contract always gives the same pipeline: the contract's data set and folder, image size, resize
(the crop fraction), interpolation, colour mode and mean/std, with the class names checked. A
contract field that the data set cannot honour is refused in one line instead of being dropped.
``resdist predict`` prepares single files with :func:`contract_preprocessing`, the per-image half
of the same pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Subset

from ..config import DATASETS, Config, ConfigError, DataConfig, check_choice
from .contract import InputContract, contract_for_data
from .errors import DataError
from .loaders import BatchLoader, TorchLoader
from .split import evenly_spaced
from .transforms import FolderPreprocessing

__all__ = ["EvalData", "contract_for_settings", "contract_preprocessing", "data_config_for",
           "eval_data"]

#: the fixed image geometry of the data sets resdist does not resize: (C, H)
NATIVE = {"fashion-mnist": (1, 28), "cifar10": (3, 32), "cifar100": (3, 32)}


@dataclass
class EvalData:
    """The batches a model is scored (or calibrated) on and how they were made.

    Attributes:
        loader: ``(images, labels)`` batches, float32 NCHW normalised with ``mean``/``std``.
        data: the data settings applied (after the contract and any overrides).
        split: ``"test"``, ``"val"`` or ``"train"``.
        class_names: the data set's classes, in label order.
        mean, std: the normalisation of the batches.
        where: the folder the images were read from (``""`` for synthetic data).
    """

    loader: BatchLoader
    data: DataConfig
    split: str
    class_names: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    where: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the batches' images."""
        return images_shape(self.data)

    def describe(self) -> str:
        """One line: which images and the preprocessing applied to them."""
        d = self.data
        origin = f" from {self.where}" if self.where else ""
        if d.name == "imagefolder":
            prep = folder_preprocessing_of(d)
            steps = (f"RGB, shorter side resized to {prep.eval_resize} ({prep.interpolation}), "
                     f"centre crop {d.image_size}x{d.image_size}")
        elif d.name == "synthetic":
            steps = f"{d.synthetic_channels}x{d.synthetic_size}x{d.synthetic_size} generated"
        else:
            c, h = NATIVE[d.name]
            steps = f"{'grey' if c == 1 else 'RGB'} {h}x{h} as stored (no resize)"
        mean = [round(v, 4) for v in self.mean]
        std = [round(v, 4) for v in self.std]
        return (f"preprocessing: {d.name} {self.split} images{origin}: {steps}, x / 255, "
                f"mean {mean}, std {std}")


def images_shape(d: DataConfig) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images ``d``'s evaluation pipeline delivers."""
    if d.name == "imagefolder":
        return (3, d.image_size, d.image_size)
    if d.name == "synthetic":
        return (d.synthetic_channels, d.synthetic_size, d.synthetic_size)
    c, h = NATIVE[d.name]
    return (c, h, h)


def folder_preprocessing_of(cfg: DataConfig) -> FolderPreprocessing:
    """The evaluation preprocessing of an ImageFolder under ``cfg``."""
    from .build import folder_preprocessing

    return folder_preprocessing(replace(cfg, augment=False))


def contract_preprocessing(contract: InputContract) -> FolderPreprocessing:
    """The per-image steps of ``contract``: shorter side resized to ``resize`` with its
    interpolation, centre crop, x / 255, ``(x - mean) / std`` (what ``predict`` applies to a
    file and an ImageFolder evaluation to each image).

    Raises:
        DataError: the contract's input is not square (resdist crops square images only).
    """
    c, h, w = contract.input_shape
    if h != w:
        raise DataError(f"the model takes {h}x{w} inputs; resdist prepares square inputs only "
                        "(centre crop of one size): feed it with your own preprocessing")
    return FolderPreprocessing(h, resize=contract.resize, interpolation=contract.interpolation,
                               mean=tuple(contract.mean), std=tuple(contract.std),
                               augment=False)


def data_config_for(contract: InputContract, base: DataConfig | str | None = None
                    ) -> DataConfig:
    """``base`` (a data set name or settings, default the contract's data set) with every
    preprocessing field the contract records: image size, resize, interpolation, mean/std,
    colour mode, the synthetic set's shape and classes, and its data folder when ``base``
    names none.

    Raises:
        DataError: no data set is known, or the data set cannot be prepared as the contract
            says (another image size for a data set resdist does not resize, a grey
            ImageFolder network, a non-square input, ...); the message names the field.
    """
    if base is None or isinstance(base, str):
        name = base or contract.dataset
        if not name:
            raise DataError("the model does not say which data set it was trained on; pass "
                            "--data NAME (and --data-dir)")
        base = DataConfig(name=name)
    check_choice("data.name", base.name, DATASETS, "data set", DataError)
    c, h, w = contract.input_shape
    where = contract.data_dir or None
    cfg = replace(base, data_dir=where or base.data_dir, mean=list(contract.mean),
                  std=list(contract.std), augment=False)
    if h != w:
        raise DataError(f"the model takes {h}x{w} inputs; resdist evaluates square inputs only")
    if base.name == "imagefolder":
        if contract.color_mode != "RGB":
            raise DataError(f"the model takes {c}-channel images ({contract.color_mode or '?'})"
                            "; resdist reads ImageFolder images as RGB: evaluate it with your "
                            "own loader")
        return replace(cfg, image_size=h, resize=contract.resize,
                       interpolation=contract.interpolation)
    if base.name == "synthetic":
        if contract.resize != h:
            raise DataError(f"the contract resizes to {contract.resize} before a {h}x{h} crop; "
                            "synthetic images are generated at the input size")
        classes = len(contract.class_names) or base.synthetic_classes
        return replace(cfg, synthetic_size=h, synthetic_channels=c,
                       synthetic_classes=max(2, classes))
    native_c, native_h = NATIVE[base.name]
    if (c, h, contract.resize) != (native_c, native_h, native_h):
        raise DataError(f"the model takes {c}x{h}x{w} inputs (resized to {contract.resize}); "
                        f"{base.name} images are {native_c}x{native_h}x{native_h} and resdist "
                        "does not resize them: evaluate it on the data it was trained on "
                        "(--data)")
    return cfg


def contract_for_settings(cfg: DataConfig) -> InputContract:
    """The contract of a network fed ``cfg``'s evaluation pipeline, without class names: what
    a file that records no contract (a state dict, a bare graph) is scored or calibrated with."""
    if cfg.name == "imagefolder":
        prep = folder_preprocessing_of(cfg)
        return contract_for_data("imagefolder", image_size=cfg.image_size,
                                 resize=prep.eval_resize, interpolation=prep.interpolation,
                                 mean=prep.mean, std=prep.std, class_names=[])
    if cfg.name == "synthetic":
        return contract_for_data("synthetic", in_chans=cfg.synthetic_channels,
                                 image_size=cfg.synthetic_size, mean=cfg.mean, std=cfg.std,
                                 num_classes=cfg.synthetic_classes)
    return contract_for_data(cfg.name, mean=cfg.mean, std=cfg.std)


def _override(cfg: DataConfig, overrides: Sequence[str]) -> DataConfig:
    """``cfg`` with ``data.key=value`` overrides (others refused), checked."""
    for item in overrides:
        if not item.strip().startswith("data."):
            raise DataError(f"--set {item}: evaluating takes data.* settings only here")
    try:
        whole = Config(data=replace(cfg)).override(list(overrides))
    except ConfigError as e:
        raise DataError(str(e)) from e
    whole.data.check(DataError)
    return whole.data


def eval_data(
    contract: InputContract,
    *,
    data: DataConfig | str | None = None,
    data_dir: str | Path | None = None,
    download: bool = False,
    batch_size: int | None = None,
    limit: int | None = None,
    overrides: Sequence[str] = (),
    split: str = "test",
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> EvalData:
    """The images of ``split`` prepared as ``contract`` says (see the module docstring).

    Args:
        contract: the model's input contract.
        data: the data set (a name, or settings such as a run's ``cfg.data``, whose folder,
            limits and validation split are kept); default the contract's.
        data_dir: the folder, over the contract's recorded one and ``data``'s.
        download: let torchvision fetch a missing Fashion-MNIST/CIFAR.
        batch_size: images per batch (default ``data.eval_batch_size``).
        limit: use this many images (evenly spaced for an ImageFolder; the first ones
            otherwise), default all.
        overrides: ``data.key=value`` settings applied last (as ``--set``).
        split: ``"test"`` (an ImageFolder's ``val/``), ``"val"`` (held out of the training set
            by ``data.val_split``) or ``"train"`` (training images without augmentation, e.g.
            for INT8 calibration). An ImageFolder's test split needs only ``val/``.
        device: where batches are delivered.
        seed: the order of a training split's images.

    Raises:
        DataError: a contract field cannot be honoured, the folder or a split is missing
            (naming ``--data-dir``), or the data's classes differ from the contract's.
    """
    check_choice("split", split, ("test", "val", "train"), "split", DataError)
    cfg = data_config_for(contract, data)
    cfg = _override(cfg, overrides)
    have, want = images_shape(cfg), tuple(contract.input_shape)
    if have != want:  # overrides asked for other images than the model takes
        raise DataError(f"the model takes {'x'.join(map(str, want))} inputs but {cfg.name} "
                        f"images are {'x'.join(map(str, have))}; evaluate it on the data it "
                        "was trained on, at its size")
    if data_dir is not None:
        cfg = replace(cfg, data_dir=str(data_dir))
    if download:
        cfg = replace(cfg, download=True)
    if batch_size is not None:
        cfg = replace(cfg, eval_batch_size=batch_size)
    if split == "val" and not cfg.val_split:
        raise DataError("no validation split (data.val_split = 0): evaluate the test split, or "
                        "--set data.val_split=...")
    if split != "val":
        cfg = replace(cfg, val_split=0.0)
    cfg = replace(cfg, **{"limit_train" if split == "train" else "limit_test": limit}
                  ) if limit is not None else cfg
    result = _read(cfg, split, torch.device(device), seed)
    _check_classes(contract, result)
    return result


def _read(cfg: DataConfig, split: str, device: torch.device, seed: int) -> EvalData:
    from .build import build_data, default_workers
    from .imagefolder import read_imagefolder_split
    from .locations import show

    if cfg.name == "imagefolder" and (split == "test" or not cfg.val_split):
        prep = folder_preprocessing_of(cfg)
        folder = "val" if split == "test" else "train"
        dataset = read_imagefolder_split(cfg.data_dir, folder, prep,
                                         skip_bad_images=cfg.skip_bad_images)
        limit = cfg.limit_test if split == "test" else cfg.limit_train
        keep = evenly_spaced(len(dataset), limit).tolist()
        workers = cfg.num_workers if cfg.num_workers is not None else default_workers()
        loader = TorchLoader(Subset(dataset, keep), batch_size=cfg.eval_batch_size,
                             device=device, num_workers=workers, seed=seed,
                             shuffle=split == "train")  # a seeded draw over the classes
        return EvalData(loader, cfg, split, list(dataset.classes), prep.mean, prep.std,
                        show(Path(dataset.root).parent))
    # the training loader is built but unused for test/val: batch 1 so that any split fits
    bundle = build_data(replace(cfg, batch_size=1), device=device, seed=seed)
    loader: Any = {"test": bundle.test, "val": bundle.val, "train": bundle.train}[split]
    names = bundle.class_names or [str(i) for i in range(bundle.num_classes)]
    where = "" if cfg.name == "synthetic" else (cfg.data_dir or "")
    if where:
        where = show(Path(where))
    return EvalData(loader, cfg, split, list(names), tuple(bundle.mean), tuple(bundle.std),
                    where)


def _check_classes(contract: InputContract, data: EvalData) -> None:
    """The data's classes must be the model's: same count and, where both have real names
    (not ``"0"``, ``"1"``, ...), the same names in the same order."""
    ours, theirs = contract.class_names, data.class_names
    if ours and len(ours) != len(theirs):
        raise DataError(f"the model has {len(ours)} classes, the {data.data.name} data "
                        f"{f'in {data.where} ' if data.where else ''}has {len(theirs)}: "
                        "evaluate it on the data it was trained on (--data, --data-dir)")
    generic = [str(i) for i in range(len(ours))]
    if data.data.name == "imagefolder" and ours not in (generic, theirs):
        differ = next(i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b)
        raise DataError(f"class {differ} of the model is {ours[differ]!r}, of {data.where} "
                        f"{theirs[differ]!r}: the folders are not the classes the model was "
                        "trained on (pass the right --data-dir)")
