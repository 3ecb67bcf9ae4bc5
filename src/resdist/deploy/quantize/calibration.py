"""Calibration data for INT8 quantisation: training images of a data set, or Gaussian images
for randomly initialised networks, and the reader that feeds either to the quantiser."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from ...data.contract import InputContract
from ..errors import DeployError

DEFAULT_CALIBRATION_IMAGES = 512
"""Training images whose activation ranges set the INT8 scales (``--calibration-images``)."""


def calibration_batches(
    data: Any,
    num_images: int = DEFAULT_CALIBRATION_IMAGES,
    batch_size: int = 64,
    seed: int = 0,
    *,
    contract: InputContract | None = None,
    data_dir: str | None = None,
) -> list[np.ndarray]:
    """``(N, C, H, W)`` float32 batches of training images for INT8 calibration.

    Args:
        data: a :class:`~resdist.config.DataConfig` (e.g. a run's ``cfg.data``), a data set
            name, or None for the ``contract``'s data set. Its training split is used (after
            ``limit_train`` and ``val_split``, so held-out validation images are not touched)
            without random augmentation, prepared as ``contract`` says (by
            :func:`resdist.data.eval_data.eval_data`, the pipeline evaluation uses; default:
            the contract of ``data``'s own settings).
        num_images: how many images (fewer if the split is smaller), drawn in a seeded random
            order.
        batch_size: images per calibration batch.
        seed: the draw's seed.
        contract: the model's input contract.
        data_dir: the data set's folder, over the contract's and ``data``'s.
    """
    from ...config import DATASETS, DataConfig, check_choice
    from ...data.eval_data import contract_for_settings, eval_data

    if isinstance(data, str):
        data = DataConfig(name=data)
    if data is not None:
        check_choice("data.name", data.name, DATASETS, "data set for calibration", DeployError)
    if num_images < 1 or batch_size < 1:
        raise DeployError(
            f"calibration needs at least one image and batch size >= 1, got {num_images} and "
            f"{batch_size}"
        )
    if contract is None:
        if data is None:
            raise DeployError("calibration needs a data set or the model's input contract")
        contract = contract_for_settings(data)
    if data is None and contract.dataset:
        data = DataConfig(name=contract.dataset)
    if data is not None:
        data = replace(data, num_workers=0)
    prepared = eval_data(contract, data=data, data_dir=data_dir, split="train", seed=seed,
                         batch_size=batch_size)
    images, count = [], 0
    for x, _ in prepared.loader:
        images.append(x[: num_images - count])
        count += len(images[-1])
        if count >= num_images:
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
    *,
    data: Any = None,
    data_dir: str | None = None,
) -> tuple[list[np.ndarray], str]:
    """Calibration batches for a model and their description.

    A resdist checkpoint calibrates on the training images of the data set its input contract
    names (its run's settings when it records a run; ``data`` names another), prepared as the
    contract says. A model without a contract (a registry model, a ``NAME=FILE`` state dict,
    a module) calibrates on ``data`` when named, at ``input_shape``; otherwise, and when the
    images cannot be read, on Gaussian images (the description says why).

    Args:
        checkpoint: the model's checkpoint or state-dict file (None for a registry model or a
            module).
        input_shape: ``(C, H, W)`` the model takes.
        num_images: images to draw.
        seed: the draw's seed.
        random_weights: the model has random weights with calibrated BatchNorm (said in the
            description of Gaussian images).
        data, data_dir: the data set (name or DataConfig) and its folder.
    """
    from ...errors import ResdistError

    contract, base = None, data
    ckpt = _checkpoint_or_none(checkpoint) if checkpoint is not None else None
    if ckpt is not None:
        contract = ckpt.contract
        if ckpt.config and (data is None or data == ckpt.run_config().data.name):
            base = ckpt.run_config().data
    if contract is None and base is not None:
        base = _shaped(base, input_shape)
    if contract is not None or base is not None:
        name = getattr(base, "name", None) or (contract.dataset if contract else "?")
        try:
            batches = calibration_batches(base, num_images, seed=seed, contract=contract,
                                          data_dir=data_dir)
        except ResdistError as e:
            return (gaussian_batches(input_shape, num_images, seed=seed),
                    f"{num_images} Gaussian images ({name} not readable: {e})")
        if tuple(batches[0].shape[1:]) == tuple(input_shape):
            n = sum(len(b) for b in batches)
            return batches, f"{n} {name} training images"
    return (gaussian_batches(input_shape, num_images, seed=seed),
            f"{num_images} Gaussian images (after the BN calibration of random weights)"
            if random_weights else f"{num_images} Gaussian images (no data set named)")


def _checkpoint_or_none(path: str) -> Any:
    """The resdist checkpoint at ``path``, or None for a bare state dict (``.safetensors``,
    or a ``.pth`` without resdist's keys)."""
    from ...engine.checkpoint import NotACheckpointError, load_checkpoint

    if str(path).endswith(".safetensors"):
        return None
    try:
        return load_checkpoint(path)
    except NotACheckpointError:
        return None


def _shaped(data: Any, input_shape: Sequence[int]) -> Any:
    """Data settings (a name or DataConfig) at a model's input size, where the data set lets
    the size vary."""
    from ...config import DataConfig

    cfg = DataConfig(name=data) if isinstance(data, str) else data
    c, h = input_shape[0], input_shape[1]
    if cfg.name == "imagefolder":
        return replace(cfg, image_size=h)
    if cfg.name == "synthetic":
        return replace(cfg, synthetic_size=h, synthetic_channels=c)
    return cfg


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
