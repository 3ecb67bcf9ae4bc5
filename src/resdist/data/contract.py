"""The input contract: what a trained network expects to be fed, recorded beside its weights.

A network trained here sees images that were read as ``color_mode`` ("L": one grey channel,
"RGB": three), resized so the shorter side is ``resize`` pixels, centre-cropped to ``(H, W)``,
scaled to [0, 1] (x / 255) and normalised per channel: ``(x - mean) / std``. Checkpoints
(``input_contract``), ONNX files (``metadata_props["input_contract"]``, JSON) and TorchScript
files (extra file ``input_contract.json``) carry this record, so a user (and ``resdist
predict``) can feed the model correctly without reading the training code.

An exported graph with the normalisation baked in (``resdist export --preprocess``) records
``normalized_inside=True`` and its ``input_dtype``: then it takes the [0, 1] float image
(``float32``) or the raw 0..255 pixels (``uint8``) and normalises itself.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import DataError
from .fashion_mnist import CLASS_NAMES as FASHION_MNIST_CLASSES
from .transforms import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR100_MEAN,
    CIFAR100_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    SYNTHETIC_MEAN,
    SYNTHETIC_STD,
    imagefolder_resize,
)

__all__ = [
    "CIFAR10_CLASSES", "CIFAR100_CLASSES", "InputContract", "contract_for_data",
    "contract_from_bundle", "contract_from_checkpoint",
]

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]
_CIFAR100_NAMES = """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach
couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger
tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm"""
CIFAR100_CLASSES = _CIFAR100_NAMES.split()

INPUT_DTYPES = ("float32", "uint8")


@dataclass
class InputContract:
    """What the network's input must be (see the module docstring for the recipe).

    Attributes:
        input_shape: ``[C, H, W]`` of one image; the batch dimension comes first.
        color_mode: ``"L"`` (grey), ``"RGB"``, or ``""`` when C is neither 1 nor 3.
        resize: the shorter image side is resized to this many pixels before the centre crop.
        mean, std: per-channel normalisation, in [0, 1] pixel units.
        class_names: one name per output logit, in order.
        dataset: the data set the network was trained on.
        normalized_inside: the graph normalises itself (exported with ``--preprocess``).
        input_dtype: ``"float32"`` or ``"uint8"`` (uint8 only with ``normalized_inside``).
    """

    input_shape: list[int]
    color_mode: str
    resize: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    dataset: str = ""
    normalized_inside: bool = False
    input_dtype: str = "float32"
    layout: str = field(default="NCHW", init=False)

    def __post_init__(self) -> None:
        self.input_shape = [int(s) for s in self.input_shape]
        self.mean = [float(m) for m in self.mean]
        self.std = [float(s) for s in self.std]
        self.class_names = [str(c) for c in self.class_names]
        self.resize = int(self.resize)
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise DataError(f"input contract: input_shape must be [C, H, W], got {self.input_shape}")
        c = self.input_shape[0]
        if len(self.mean) != c or len(self.std) != c or min(self.std) <= 0:
            raise DataError(f"input contract: {c} channels but mean {self.mean}, std {self.std}")
        if self.input_dtype not in INPUT_DTYPES:
            raise DataError(f"input contract: input_dtype must be one of {INPUT_DTYPES}")

    @property
    def value_range(self) -> list[float]:
        """Range of the pixel values before normalisation: [0, 255] for a uint8 graph, else
        [0, 1] (the graph then takes them as they are when ``normalized_inside``, otherwise
        after ``(x - mean) / std``)."""
        return [0.0, 255.0] if self.input_dtype == "uint8" else [0.0, 1.0]

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, strings, numbers and bools (safe for ``torch.load(weights_only=True)``)."""
        d = asdict(self)
        d["value_range"] = self.value_range
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputContract:
        """Inverse of :meth:`to_dict` (unknown keys, such as ``value_range``, are ignored)."""
        if not isinstance(d, dict):
            raise DataError(f"input contract must be a mapping, got {type(d).__name__}")
        names = {f.name for f in fields(cls) if f.init}
        missing = {"input_shape", "color_mode", "resize", "mean", "std", "class_names"} - set(d)
        if missing:
            raise DataError(f"input contract lacks {', '.join(sorted(missing))}")
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError) as e:
            raise DataError(f"bad input contract: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> InputContract:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise DataError(f"input contract is not valid JSON: {e}") from e

    def describe(self) -> str:
        """One paragraph for people: what to feed the graph."""
        c, h, w = self.input_shape
        mode = {"L": "grey", "RGB": "RGB"}.get(self.color_mode, f"{c}-channel")
        prep = f"{mode} image, shorter side resized to {self.resize}, centre crop {h}x{w}"
        if self.normalized_inside:
            scale = "raw 0..255 uint8 pixels" if self.input_dtype == "uint8" else \
                "float32 pixels scaled to [0, 1] (x / 255)"
            norm = f"{scale}; the graph normalises itself (mean {self.mean}, std {self.std})"
        else:
            norm = f"float32 (x / 255 - mean) / std with mean {self.mean}, std {self.std}"
        return (f"input N x {c} x {h} x {w} ({self.layout}): {prep}; {norm}; "
                f"{len(self.class_names)} classes")


def _color_mode(channels: int) -> str:
    return {1: "L", 3: "RGB"}.get(channels, "")


def contract_for_data(
    name: str,
    *,
    in_chans: int | None = None,
    image_size: int | None = None,
    num_classes: int | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    data_dir: str | Path | None = None,
) -> InputContract:
    """The contract of a network trained on data set ``name`` (``data.name`` of a config).

    Known values (shape, mean/std and class names of Fashion-MNIST and CIFAR; ImageNet
    statistics and the resize rule for image folders) fill what is not given. ImageFolder class
    names are the sorted sub-folders of ``data_dir/train`` when it exists; names that cannot be
    known are ``"0"``, ``"1"``, ...
    """
    known: dict[str, tuple] = {
        "fashion-mnist": (1, 28, FASHION_MNIST_MEAN, FASHION_MNIST_STD, FASHION_MNIST_CLASSES),
        "cifar10": (3, 32, CIFAR10_MEAN, CIFAR10_STD, CIFAR10_CLASSES),
        "cifar100": (3, 32, CIFAR100_MEAN, CIFAR100_STD, CIFAR100_CLASSES),
        "imagefolder": (3, 224, IMAGENET_MEAN, IMAGENET_STD, None),
        "synthetic": (3, 32, None, None, None),
    }
    if name not in known:
        raise DataError(f"no input contract known for data set {name!r}")
    c0, size0, mean0, std0, names0 = known[name]
    c = in_chans or c0
    size = image_size or size0
    if mean0 is None:
        mean0, std0 = (SYNTHETIC_MEAN,) * c, (SYNTHETIC_STD,) * c
    if class_names is None and name == "imagefolder" and data_dir is not None:
        train = Path(data_dir) / "train"
        if train.is_dir():
            class_names = sorted(p.name for p in train.iterdir() if p.is_dir())
    if class_names is None and names0 is not None and num_classes in (None, len(names0)):
        class_names = names0
    if class_names is None and name == "synthetic" and num_classes:
        class_names = [f"class_{i}" for i in range(num_classes)]
    if class_names is None or (num_classes is not None and len(class_names) != num_classes):
        class_names = [str(i) for i in range(num_classes or 0)]
    resize = imagefolder_resize(size) if name == "imagefolder" else size
    return InputContract(
        input_shape=[c, size, size], color_mode=_color_mode(c), resize=resize,
        mean=list(mean if mean is not None else mean0), std=list(std if std is not None else std0),
        class_names=list(class_names), dataset=name,
    )


def contract_from_bundle(data: Any) -> InputContract:
    """The contract of a network trained on a :class:`~resdist.data.DataBundle`."""
    return contract_for_data(
        data.name, in_chans=data.in_chans, image_size=data.image_size,
        num_classes=data.num_classes, class_names=data.class_names,
        mean=data.mean or None, std=data.std or None,
    )


def contract_from_checkpoint(ckpt: dict[str, Any]) -> InputContract:
    """The contract a checkpoint records, or, for checkpoints written before it was recorded,
    the one derived from the run's saved config, input shape and class count."""
    if ckpt.get("input_contract"):
        return InputContract.from_dict(ckpt["input_contract"])
    data = (ckpt.get("config") or {}).get("data") or {}
    shape = ckpt.get("input_shape")
    if "name" not in data or not shape:
        raise DataError("the checkpoint records neither an input contract nor the data set and "
                        "input shape it was trained on")
    kw = ckpt.get("model_kwargs") or {}
    return contract_for_data(
        data["name"], in_chans=int(shape[0]), image_size=int(shape[1]),
        num_classes=kw.get("num_classes"), data_dir=data.get("data_dir"),
    )
