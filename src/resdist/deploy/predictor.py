"""Classify image files with a trained model, fed as its recorded input contract says.

``Predictor.load(path)`` takes a resdist checkpoint (``.pth`` or a run folder) or an exported
file of any registered format (:mod:`resdist.deploy.formats`), run in its own runtime; all
carry the input contract
(:mod:`resdist.data.contract`). :func:`load_image` turns a PNG/JPEG file into the array the
model takes: colour mode converted (grey or RGB), shorter side resized and centre-cropped to the
input size, scaled to [0, 1] and normalised (or left to the graph when it normalises itself).

    predictor = Predictor.load("plain56.onnx")
    for result in predictor.predict_files(["shoe.png"], topk=3):
        print(result.path, result.top[0])
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.contract import InputContract
from ..data.eval_data import contract_preprocessing
from ..data.images import open_image
from ..safe_load import special_file
from .errors import DeployError
from .formats import format_of
from .formats.common import CONTRACT_KEY
from .runtime import check_logits

__all__ = ["IMAGE_SUFFIXES", "Prediction", "Predictor", "find_images", "load_image", "predict"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass
class Prediction:
    """The top classes for one image: ``top`` is ``[(class name, index, probability), ...]``,
    most probable first."""

    path: str
    top: list[tuple[str, int, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.path, "top": [{"class": n, "index": i, "probability": p}
                                           for n, i, p in self.top]}


def find_images(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named by ``paths``: files as given, folders searched recursively for files
    with an image suffix (sorted). A missing path or a folder without images is an error."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(f for f in p.rglob("*")
                            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not inside:
                raise DeployError(f"{p}: no image files ({', '.join(IMAGE_SUFFIXES)}) inside")
            found += inside
        elif p.is_file():
            found.append(p)
        elif p.exists():
            raise DeployError(f"{p}: not a regular file or folder (a pipe or a device); pass "
                              "image files or folders of them")
        else:
            raise DeployError(f"{p}: no such file or folder")
    if not found:
        raise DeployError("no image given")
    return found


def load_image(path: str | os.PathLike, contract: InputContract) -> np.ndarray:
    """One image file as the ``(C, H, W)`` array the model takes (see the module docstring).

    Raises:
        DataError: the file is not a readable image (the message names it).
    """
    c, h, w = contract.input_shape
    if contract.color_mode not in ("L", "RGB"):
        raise DeployError(f"cannot read {c}-channel images from files (grey or RGB only)")
    prep = contract_preprocessing(contract)  # the steps resdist eval applies to each image
    img = open_image(path, contract.color_mode)  # 16-bit grey scaled to 8 bits, as in training
    img = prep.resize_and_crop(img)
    pixels = np.asarray(img, dtype=np.uint8).reshape(h, w, -1).transpose(2, 0, 1)
    if contract.input_dtype == "uint8":
        return np.ascontiguousarray(pixels)
    x = pixels.astype(np.float32) / 255.0
    if not contract.normalized_inside:
        mean = np.asarray(contract.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(contract.std, dtype=np.float32).reshape(-1, 1, 1)
        x = (x - mean) / std
    return np.ascontiguousarray(x, dtype=np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Predictor:
    """A model plus its input contract; ``logits(batch)`` runs it on prepared arrays."""

    def __init__(self, run: Any, contract: InputContract, source: str) -> None:
        self._run = run
        self.contract = contract
        self.source = source

    @classmethod
    def load(cls, path: str | os.PathLike, *, trust_torchscript: bool = False) -> Predictor:
        """From a resdist checkpoint (``.pth``/``.pt`` file or run folder) or an exported file
        of any registered format; a TorchScript file only with ``trust_torchscript=True``, as
        loading one runs the code it carries (checkpoints and the other formats run none)."""
        path = Path(path)
        if not path.exists():
            raise DeployError(f"model not found: {path}")
        if special_file(path):  # reading a FIFO blocks, /dev/zero never ends
            raise DeployError(f"{path} is not a regular file (a pipe or a device); pass a "
                              "checkpoint (.pth), its run folder or an exported model file")
        fmt = format_of(path)
        if fmt is None:
            return cls._from_checkpoint(path)
        # a file that carries code is refused before anything is read from it; the others
        # are read (and a damaged file said to be so) before their runtime opens them
        run = fmt.load_runner(path, trusted=trust_torchscript) if fmt.runs_code else None
        contract = fmt.read_contract(path)
        if contract is None:
            raise DeployError(f"{path} records no input contract ({CONTRACT_KEY}); export it "
                              "again with `resdist export`")
        return cls(run or fmt.load_runner(path), contract, str(path))

    @classmethod
    def _from_checkpoint(cls, path: Path) -> Predictor:
        from ..engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        contract = ckpt.require_contract()
        model = ckpt.build_model().eval()

        def run(batch: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.from_numpy(batch)).float().numpy()

        return cls(run, contract, str(path))

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """``(N, C, H, W)`` prepared images -> ``(N, classes)`` logits.

        Raises:
            DeployError: the model's output is not one finite logit per named class for each
                image (:func:`~resdist.deploy.runtime.check_logits`).
        """
        names = self.contract.class_names
        return check_logits(self._run(batch), len(batch), len(names) if names else None,
                            self.source)

    def predict_files(
        self, paths: Sequence[str | os.PathLike], topk: int = 5, batch_size: int = 32
    ) -> list[Prediction]:
        """Top-``topk`` classes of each image file, in the order given."""
        if topk < 1:
            raise DeployError(f"topk must be >= 1, got {topk}")
        names = self.contract.class_names
        results = []
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start : start + batch_size])
            batch = np.stack([load_image(p, self.contract) for p in chunk])
            probs = _softmax(self.logits(batch))
            k = min(topk, probs.shape[1])
            for p, row in zip(chunk, probs):
                order = np.argsort(-row, kind="stable")[:k]
                top = [(names[i] if i < len(names) else str(i), int(i), float(row[i]))
                       for i in order]
                results.append(Prediction(str(p), top))
        return results


def predict(
    model: str | os.PathLike, images: Sequence[str | os.PathLike], topk: int = 5,
    *, trust_torchscript: bool = False,
) -> list[Prediction]:
    """Top-``topk`` classes for image files and folders, with a checkpoint or an ONNX file (a
    TorchScript file only with ``trust_torchscript``: loading it runs its code)."""
    predictor = Predictor.load(model, trust_torchscript=trust_torchscript)
    return predictor.predict_files(find_images(images), topk=topk)
