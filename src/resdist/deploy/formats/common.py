"""What every export format shares: the export job, the written-file record, random example
inputs, the comparison with PyTorch and the atomic write.

A format module (:mod:`.onnx`, :mod:`.torchscript`, ...) turns an :class:`ExportJob` into a
file and a :class:`Written` record, reads a file's input contract without running code, and
opens a file as a :data:`Runner` (a prepared ``(N, C, H, W)`` batch -> logits function).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...atomic import atomic_path, write_failure
from ...data.contract import InputContract
from ...data.errors import DataError
from ..errors import DeployError

__all__ = ["CONTRACT_KEY", "INPUT_NAME", "OUTPUT_NAME", "ExportJob", "FileInfo", "Runner",
           "Written", "check_input_shape", "checked", "contract_from_text", "example_input", "first_line",
           "first_output",
           "int8_agreement", "model_device", "reference_outputs", "relative_error",
           "verify_runner", "write_file"]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
CONTRACT_KEY = "input_contract"  # metadata key (JSON) in every format that has a place for it

Runner = Callable[[np.ndarray], np.ndarray]
"""A prepared ``(N, C, H, W)`` batch (as the file's contract says) -> ``(N, classes)`` logits."""


@dataclass
class ExportJob:
    """One export request as a format module receives it.

    Attributes:
        deployed: the folded network to write (normalisation inside when the contract says so).
        reference: the PyTorch model the written file is checked against.
        out: the file to write.
        input_shape: ``(C, H, W)`` of one image.
        contract: the input contract the file records (None: none).
        input_dtype: ``"float32"`` or ``"uint8"`` (baked normalisation only).
        verify: compare the written file with ``reference`` on random inputs.
        opset: ONNX opset (ONNX and formats converted through ONNX).
        int8: quantise with the runtime's own INT8 tool.
        calibration: for ``int8``, a function returning an iterator of prepared calibration
            batches (``(N, C, H, W)`` arrays, as the contract says).
        check_images: for ``int8``, prepared real images on which the INT8 file's top-1
            agreement with the fp32 PyTorch model is measured.
        data_name: the data set the calibration images came from, recorded in INT8 files so
            that ``resdist eval`` scores them on it without options.
        batch: the batch size of formats whose programs take a fixed one (ExecuTorch).
        delegate: lower to the runtime's accelerated backend (ExecuTorch: XNNPACK); False
            keeps its portable kernels, whose memory plan shows every activation.
        model_name, model_kwargs: the registry name and builder arguments of the network
            (a checkpoint's; None for a module), for formats that store weights, not a graph.
    """

    deployed: nn.Module
    reference: nn.Module
    out: Path
    input_shape: tuple[int, int, int]
    contract: InputContract | None
    input_dtype: str = "float32"
    verify: bool = True
    opset: int = 18
    int8: bool = False
    calibration: Callable[[], Iterator[np.ndarray]] | None = None
    check_images: np.ndarray | None = None
    data_name: str | None = None
    batch: int = 1
    delegate: bool = True
    model_name: str | None = None
    model_kwargs: dict[str, Any] | None = None


@dataclass
class Written:
    """An exported file and the figures read back from it."""

    path: Path
    inputs: list[dict[str, Any]]
    opset: int | None
    feature_adds: int | None
    max_rel_error: float | None
    precision: str = "fp32"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class FileInfo:
    """What an exported file says about itself, read without running it.

    Attributes:
        precision: ``"fp32"`` or ``"int8"``.
        data: the data set name the file records (INT8 exports record the calibration data),
            or None.
        input_shape: the fixed ``(C, H, W)`` the graph takes, or None where it is not fixed
            or cannot be read.
    """

    precision: str = "fp32"
    data: str | None = None
    input_shape: tuple[int, int, int] | None = None


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def contract_from_text(path: Path, text: Any) -> InputContract | None:
    """The input contract in ``text``, the JSON a file's metadata holds (None when the file
    has none), or one :class:`DeployError` line naming ``path``."""
    if not text:
        return None
    try:
        return InputContract.from_json(str(text))
    except DataError as e:
        raise DeployError(f"{path}: {e}") from e


def check_input_shape(input_shape: Sequence[int] | None) -> tuple[int, int, int]:
    """``input_shape`` as three positive ints ``(C, H, W)``, or :class:`DeployError`."""
    if input_shape is None:
        raise DeployError("input_shape (C, H, W) is required to export a model")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DeployError(f"input_shape must be three positive ints (C, H, W), got {input_shape}")
    return shape  # type: ignore[return-value]


def example_input(batch: int, shape: Sequence[int], input_dtype: str,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Random images of ``shape``: standard normal floats, or uniform 0..255 ``uint8``."""
    if input_dtype == "uint8":
        return torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=generator)
    return torch.randn((batch, *shape), generator=generator)


def first_output(out: Any) -> torch.Tensor:
    """The logits of a model output that may be a tuple, list or dict."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s first parameter or buffer lives (CPU for a model with none)."""
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def reference_outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """``model(x)`` in eval mode, fp32 on the host; ``x`` goes to the model's device (a model
    trained on CUDA is compared where it lives)."""
    device = model_device(model)
    if device.type == "meta":
        raise DeployError("the model's weights are on the meta device (no data): load them first")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return first_output(model(x.to(device))).float().cpu().numpy()
    finally:
        model.train(was_training)


def relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    """``max|out - ref| / max|ref|`` in float64."""
    out = np.asarray(out)
    if out.shape != ref.shape:
        raise DeployError(f"output shape {out.shape} differs from the model's {ref.shape}")
    scale = max(float(np.abs(ref).max()), 1e-12)
    return float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max() / scale)


def verify_runner(run: Runner, model: nn.Module, shape: Sequence[int], input_dtype: str,
                  batch_sizes: Sequence[int] = (1, 3), seed: int = 0) -> float:
    """Largest relative error of ``run`` against ``model`` on random inputs."""
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = example_input(b, shape, input_dtype, gen)
        err = relative_error(run(x.numpy()), reference_outputs(model, x))
        if not math.isfinite(err):  # max() would pass a NaN by
            raise DeployError("the exported file outputs NaN or infinite values on random "
                              "inputs where the PyTorch model does not; do not ship it (report "
                              "the model and format to resdist)")
        worst = max(worst, err)
    return worst


def check_finite_outputs(model: nn.Module, shape: Sequence[int], input_dtype: str) -> None:
    """Refuse a model whose output on a random input is NaN or infinite (finite weights can
    still do it: a negative BatchNorm variance), before any file is written."""
    x = example_input(1, shape, input_dtype, torch.Generator().manual_seed(0))
    if not np.isfinite(reference_outputs(model, x)).all():
        raise DeployError("the model outputs NaN or infinite values on a random input (damaged "
                          "weights or BatchNorm statistics); nothing was written")


def int8_agreement(run: Runner, model: nn.Module, images: np.ndarray | None,
                   batch: int = 1) -> float | None:
    """Fraction of ``images`` whose top-1 class under ``run`` (an INT8 file) is the PyTorch
    model's (None without images); ``batch`` is the batch size the file takes."""
    if images is None or len(images) == 0:
        return None
    same = 0
    for i in range(0, len(images) - len(images) % batch, batch):
        x = np.ascontiguousarray(images[i:i + batch])
        ref = reference_outputs(model, torch.from_numpy(x)).argmax(1)
        same += int((np.asarray(run(x)).argmax(1) == ref).sum())
    counted = len(images) - len(images) % batch
    return same / max(counted, 1)


def checked(job: ExportJob, path: Path, run: Runner, feature_adds: int | None,
            extra: dict[str, Any] | None = None, batch: int | None = None) -> Written:
    """The record of a file just written for ``job`` and opened as ``run``: for INT8, the
    top-1 agreement with PyTorch on the job's real images (``extra["int8_agreement"]``); for
    fp32 with ``job.verify``, the relative error on random inputs. ``batch``: the fixed batch
    the file takes (None: any)."""
    extra = dict(extra or {})
    err = None
    if job.int8:
        extra["int8_agreement"] = int8_agreement(run, job.reference, job.check_images, batch or 1)
    elif job.verify:
        err = verify_runner(run, job.reference, job.input_shape, job.input_dtype)
    inputs = [{"name": INPUT_NAME, "shape": [batch or "N", *job.input_shape],
               "dtype": job.input_dtype}]
    return Written(path, inputs, None, feature_adds, err, "int8" if job.int8 else "fp32", extra)


def write_file(path: str | os.PathLike, write: Callable[[Path], Any], what: str) -> Path:
    """Write an export atomically: ``write(tmp)`` fills a temporary file beside ``path``, which
    then replaces ``path`` (:func:`resdist.atomic.atomic_path`). A full disk or any other write
    failure leaves an existing ``path`` as it was and no partial file, and is one
    :class:`DeployError` line."""
    path = Path(path)
    existed = path.is_file()
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        kept = "the previous file is kept" if existed else "no file was written"
        raise DeployError(f"cannot write the {what} {path}: {reason}; {kept}") from e
    return path
