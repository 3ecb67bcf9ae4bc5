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
import math
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import INTERPOLATIONS
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
    "contract_from_bundle",
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
MIN_STD = 1e-6  # a smaller std is damage: x / std overflows float32
MAX_NAME = 200  # characters of one class name
MAX_PATH = 4096  # characters of the recorded data folder
#: characters of a contract's JSON text: room for 100,000 class names of 25 characters written
#: as JSON escapes (a CJK character is 6: \uXXXX), e.g. 10,000 classes of 200 such characters;
#: the cap keeps a damaged or hostile file from being parsed at any length
MAX_JSON = 16 << 20
COLOR_MODES = ("L", "RGB", "")
#: the largest image side or channel count a contract may name (larger ones are damage)
MAX_SIDE = 16384


def class_name_problem(name: str) -> str | None:
    """What makes ``name`` unfit to be a class name in a contract (``None`` if nothing): not
    valid UTF-8 (a file name's undecodable bytes), control or formatting characters (a newline,
    a bidi override), or more than :data:`MAX_NAME` characters."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (undecodable bytes, or a lone surrogate)"
    if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in name):
        return "holds control or formatting characters"
    if len(name) > MAX_NAME:
        return f"is longer than {MAX_NAME} characters"
    return None


def _seq(key: str, value: Any) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise DataError(f"input contract: {key} must be a list, got {type(value).__name__}")
    return list(value)


def _whole(key: str, value: Any, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= high:
        raise DataError(f"input contract: {key} must hold whole numbers in [1, {high}], got "
                        f"{value!r}")
    return int(value)


def _number(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(f"input contract: {key} must hold finite numbers, got {value!r}")
    return float(value)


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
        interpolation: how the image is resized: ``"bilinear"``, ``"bicubic"`` or
            ``"nearest"`` (PIL's filters of those names).
        data_dir: the absolute folder the training images were read from (``""``: not
            recorded); where ``resdist eval`` looks when no ``--data-dir`` is given. It names a
            location, it holds no image.
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
    interpolation: str = "bilinear"
    data_dir: str = ""
    layout: str = field(default="NCHW", init=False)

    def __post_init__(self) -> None:
        self.input_shape = [_whole("input_shape", s, MAX_SIDE) for s in _seq(
            "input_shape", self.input_shape)]
        if len(self.input_shape) != 3:
            raise DataError(f"input contract: input_shape must be [C, H, W], got {self.input_shape}")
        c, h, w = self.input_shape
        self.mean = [_number("mean", m) for m in _seq("mean", self.mean)]
        self.std = [_number("std", s) for s in _seq("std", self.std)]
        if len(self.mean) != c or len(self.std) != c or min(self.std) <= 0:
            raise DataError(f"input contract: {c} channels need {c} mean and {c} positive std "
                            f"values, got mean {self.mean}, std {self.std}")
        if min(self.std) < MIN_STD or max(map(abs, self.mean + self.std)) > 1e6:
            raise DataError(f"input contract: mean and std are in [0, 1] pixel units; std "
                            f"{self.std} (below {MIN_STD:g}?) or mean {self.mean} is absurd")
        names = _seq("class_names", self.class_names)
        if not all(isinstance(n, str) for n in names):
            raise DataError("input contract: class_names must be a list of strings")
        odd = next((n for n in names if class_name_problem(n)), None)
        if odd is not None:
            raise DataError(f"input contract: class name {odd[:40]!r} "
                            f"{class_name_problem(odd)}")
        self.class_names = list(names)
        self.resize = _whole("resize", self.resize, MAX_SIDE)
        if self.resize < max(h, w):
            raise DataError(f"input contract: resize {self.resize} is smaller than the "
                            f"{h}x{w} crop it is cut to")
        if self.color_mode not in COLOR_MODES or (self.color_mode or _color_mode(c)) != \
                _color_mode(c):
            raise DataError(f"input contract: color_mode {self.color_mode!r} does not fit "
                            f"{c} channels (1: 'L', 3: 'RGB', otherwise '')")
        if not isinstance(self.dataset, str):
            raise DataError(f"input contract: dataset must be a string, got {self.dataset!r}")
        if not isinstance(self.normalized_inside, bool):
            raise DataError("input contract: normalized_inside must be true or false, got "
                            f"{self.normalized_inside!r}")
        if self.input_dtype not in INPUT_DTYPES:
            raise DataError(f"input contract: input_dtype must be one of {INPUT_DTYPES}, got "
                            f"{self.input_dtype!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"input contract: interpolation must be one of {INTERPOLATIONS}, "
                            f"got {self.interpolation!r}")
        if not isinstance(self.data_dir, str) or len(self.data_dir) > MAX_PATH or any(
                unicodedata.category(ch) in ("Cc", "Cf") for ch in self.data_dir):
            raise DataError(f"input contract: data_dir must be a folder path (text of at most "
                            f"{MAX_PATH} characters), got {str(self.data_dir)[:60]!r}")
        if self.input_dtype == "uint8" and not self.normalized_inside:
            raise DataError("input contract: input_dtype uint8 needs normalized_inside")

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
        contract = cls(**{k: v for k, v in d.items() if k in names})
        # derived fields, if present, must say what the contract implies
        if d.get("layout", contract.layout) != contract.layout:
            raise DataError(f"input contract: layout must be {contract.layout}, got "
                            f"{d['layout']!r}")
        if "value_range" in d and d["value_range"] != contract.value_range:
            raise DataError(f"input contract: value_range must be {contract.value_range} for "
                            f"{contract.input_dtype} input, got {d['value_range']!r}")
        return contract

    @classmethod
    def from_json(cls, text: str) -> InputContract:
        if len(text) > MAX_JSON:
            raise DataError(f"input contract is {len(text)} characters of JSON, more than a "
                            f"contract ever needs ({MAX_JSON})")
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as e:  # JSONDecodeError, or a 5000-digit number
            raise DataError(f"input contract is not valid JSON: {str(e)[:200]}") from None
        return cls.from_dict(value)

    def describe(self) -> str:
        """One paragraph for people: what to feed the graph."""
        c, h, w = self.input_shape
        mode = {"L": "grey", "RGB": "RGB"}.get(self.color_mode, f"{c}-channel")
        prep = (f"{mode} image, shorter side resized to {self.resize} ({self.interpolation}), "
                f"centre crop {h}x{w}")
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
    resize: int | None = None,
    interpolation: str = "bilinear",
    record_data_dir: bool = False,
) -> InputContract:
    """The contract of a network trained on data set ``name`` (``data.name`` of a config).

    Known values (shape, mean/std and class names of Fashion-MNIST and CIFAR; ImageNet
    statistics and the resize rule for image folders) fill what is not given. ImageFolder class
    names are the sorted sub-folders of ``data_dir/train`` when it exists; names that cannot be
    known are ``"0"``, ``"1"``, ...
    With ``record_data_dir``, ``data_dir`` (made absolute) is recorded in the contract.
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
    if resize is None:
        resize = imagefolder_resize(size) if name == "imagefolder" else size
    return InputContract(
        input_shape=[c, size, size], color_mode=_color_mode(c), resize=resize,
        interpolation=interpolation,
        mean=list(mean if mean is not None else mean0), std=list(std if std is not None else std0),
        class_names=list(class_names), dataset=name,
        data_dir=os.path.abspath(data_dir) if record_data_dir and data_dir else "",
    )


def contract_from_bundle(data: Any, data_dir: str | Path | None = None) -> InputContract:
    """The contract of a network trained on a :class:`~resdist.data.DataBundle` read from
    ``data_dir`` (recorded, absolute, when given)."""
    return contract_for_data(
        data.name, in_chans=data.in_chans, image_size=data.image_size,
        num_classes=data.num_classes, class_names=data.class_names,
        mean=data.mean or None, std=data.std or None,
        resize=getattr(data, "resize", None), interpolation=getattr(data, "interpolation",
                                                                     "bilinear"),
        data_dir=data_dir, record_data_dir=data_dir is not None,
    )
