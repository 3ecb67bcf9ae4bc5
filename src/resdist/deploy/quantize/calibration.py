"""Calibration data for INT8 quantisation: training images of a data set, or Gaussian images
for randomly initialised networks, and the reader that feeds either to the quantiser."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ..errors import DeployError

DEFAULT_CALIBRATION_IMAGES = 512
"""Training images whose activation ranges set the INT8 scales (``--calibration-images``)."""


def calibration_batches(
    data: Any,
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    batch_size: int = 64,
    seed: int = 0,
) -> list[np.ndarray]:
    """``(N, C, H, W)`` float32 batches of training images for INT8 calibration.

    Args:
        data: a :class:`~resdist.config.DataConfig` (e.g. a run's ``cfg.data``) or a data set
            name. Its training split is used (after ``limit_train`` and ``val_split``, so held-out
            validation images are not touched) with the training normalisation and no random
            augmentation (ImageFolder: the evaluation resize and centre crop).
        num_images: how many images (fewer if the split is smaller), drawn in a seeded random
            order.
        batch_size: images per calibration batch.
        seed: the draw's seed.
    """
    from ...config import DATASETS, DataConfig, check_choice
    from ...data import build_data

    if isinstance(data, str):
        data = DataConfig(name=data)
    check_choice("data.name", data.name, DATASETS, "data set for calibration", DeployError)
    if num_images < 1 or batch_size < 1:
        raise DeployError(
            f"calibration needs at least one image and batch size >= 1, got {num_images} and "
            f"{batch_size}"
        )
    cfg = replace(data, augment=False, batch_size=1, num_workers=0)
    bundle = build_data(cfg, device="cpu", seed=seed)
    images = []
    for x, _ in bundle.train:
        images.append(x)
        if len(images) >= num_images:
            break
    stacked = torch.cat(images).numpy()
    return [stacked[i:i + batch_size] for i in range(0, len(stacked), batch_size)]


def gaussian_batches(
    input_shape: Sequence[int], num_images: int = 64, batch_size: int = 16, seed: int = 0
) -> list[np.ndarray]:
    """Standard-normal ``(N, C, H, W)`` batches: calibration for randomly initialised networks
    (latency studies), where no data set belongs to the weights."""
    rng = np.random.default_rng(seed)
    sizes = [min(batch_size, num_images - i) for i in range(0, num_images, batch_size)]
    return [rng.standard_normal((n, *input_shape)).astype(np.float32) for n in sizes]


def calibration_for(
    checkpoint: str | None,
    input_shape: Sequence[int],
    num_images: int,
    seed: int = 0,
    random_weights: bool = False,
) -> tuple[list[np.ndarray], str]:
    """Calibration batches for a model and their description: the training images of a
    checkpoint's run when they can be read and fit ``input_shape``, else Gaussian images.

    Args:
        checkpoint: the model's checkpoint file (None for a registry model or a module).
        input_shape: ``(C, H, W)`` the model takes.
        num_images: images to draw.
        seed: the draw's seed.
        random_weights: the model has random weights with calibrated BatchNorm (said in the
            description of Gaussian images).
    """
    if checkpoint is not None:
        from ...engine.checkpoint import load_checkpoint
        from ...errors import ResdistError

        ckpt = load_checkpoint(checkpoint)
        if ckpt.config:
            data = ckpt.run_config().data
            try:
                batches = calibration_batches(data, num_images, seed=seed)
            except ResdistError as e:
                return (gaussian_batches(input_shape, num_images, seed=seed),
                        f"{num_images} Gaussian images ({data.name} not readable: {e})")
            if tuple(batches[0].shape[1:]) == tuple(input_shape):
                n = sum(len(b) for b in batches)
                return batches, f"{n} {data.name} training images"
    return (gaussian_batches(input_shape, num_images, seed=seed),
            f"{num_images} Gaussian images (after the BN calibration of random weights)"
            if random_weights else f"{num_images} Gaussian images")


def calibration_reader(calibration: Any, input_name: str) -> tuple[Any, Callable[[], int | None]]:
    """A ``CalibrationDataReader`` over ``calibration`` (a reader, returned as it is, or an
    iterable of ``(N, C, H, W)`` arrays/tensors) and a function giving the images it fed
    (None for a caller's reader)."""
    from onnxruntime.quantization import CalibrationDataReader

    if isinstance(calibration, CalibrationDataReader):
        return calibration, lambda: None

    class _Arrays(CalibrationDataReader):
        def __init__(self, batches: Iterable[Any]) -> None:
            self.batches = iter(batches)
            self.images = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            if batch is None:
                return None
            if isinstance(batch, torch.Tensor):
                batch = batch.detach().cpu().numpy()
            arr = np.ascontiguousarray(batch, dtype=np.float32)
            if arr.ndim != 4:
                raise DeployError(
                    f"calibration batches must be (N, C, H, W) arrays, got shape {arr.shape}"
                )
            self.images += len(arr)
            return {input_name: arr}

    reader = _Arrays(calibration)
    return reader, lambda: reader.images
