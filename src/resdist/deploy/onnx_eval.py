"""Evaluate an exported model (any registered format, fp32 or INT8) in its own runtime on a
resdist test set.

The images are prepared from the file's input contract by the function ``resdist eval`` of a
checkpoint uses (:func:`resdist.data.eval_data.eval_data`), and the metrics are those of
:func:`resdist.engine.evaluate` (top-1, top-5, mean cross-entropy), so the figures of a
checkpoint and of its fp32 export agree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..data.contract import InputContract
from ..safe_load import special_file
from ._onnx_graph import graph_inputs, load_onnx, value_shapes
from .errors import DeployError
from .formats import FORMATS, format_of
from .runtime import check_logits

__all__ = ["evaluate_export_file", "evaluate_onnx", "evaluate_onnx_file",
           "evaluate_torchscript_file", "model_file_kind", "onnx_input_shape", "score_batches"]


def model_file_kind(path: str | os.PathLike) -> str:
    """``"checkpoint"`` for a resdist checkpoint, run folder or state dict (or a missing path,
    which its loader then reports), else the export format's name
    (:func:`resdist.deploy.formats.format_of`). A missing file with an export's suffix, or a
    ``.onnx`` file that is not ONNX, raises :class:`DeployError`."""
    path = Path(path)
    if special_file(path):  # reading a FIFO blocks, /dev/zero never ends
        raise DeployError(f"{path} is not a regular file (a pipe or a device); pass a "
                          "checkpoint (.pth), its run folder or an exported model file")
    fmt = format_of(path)
    if fmt is None:
        return "checkpoint"
    if not path.exists():
        raise DeployError(f"{fmt.label} file not found: {path}")
    if fmt.name == "onnx" and not fmt.impl().sniff(path):
        raise DeployError(
            f"cannot read {path}: not an ONNX model, or truncated (a .pth written by resdist "
            "train or an .onnx written by resdist export is expected); export it again")
    return fmt.name


def onnx_input_shape(onnx_model_or_path: Any) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of a model's single input when fixed, else None."""
    model = load_onnx(onnx_model_or_path)
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        return None
    dims = value_shapes(model)[inputs[0].name][0]
    if dims is None or len(dims) != 4 or not all(isinstance(d, int) for d in dims[1:]):
        return None
    return (int(dims[1]), int(dims[2]), int(dims[3]))


def evaluate_onnx(
    path: str | os.PathLike,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    threads: int | None = None,
    contract: InputContract | None = None,
    normalization: tuple[Sequence[float], Sequence[float]] | None = None,
    num_classes: int | None = None,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of an ONNX model over ``loader``.

    ``loader`` yields ``(images, labels)`` batches as resdist loaders do (float32 NCHW,
    normalised with ``normalization = (mean, std)``); a graph whose ``contract`` says it
    normalises itself gets the images back in [0, 1] (or as 0..255 ``uint8`` pixels), as its
    contract asks. ``threads`` sets ONNX Runtime's intra-op threads (default: its own choice);
    ``num_classes``, when given, is the logit count each image must get.
    Returns the same keys as :func:`resdist.engine.evaluate`.
    """
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"ONNX file not found: {path}")
    run = FORMATS["onnx"].load_runner(path, threads)
    return score_batches(run, loader, _feeder(contract, normalization), num_classes=num_classes,
                         source=str(path))


def score_batches(run: Callable[[np.ndarray], np.ndarray],
                  loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                  feed: Callable[[np.ndarray], np.ndarray] = lambda x: x, *,
                  num_classes: int | None = None, source: str = "the model") -> dict[str, float]:
    """Top-1/top-5 (%) and mean cross-entropy of ``run`` (a prepared batch -> logits, as NumPy)
    over ``loader``; ``feed`` turns the loader's normalised batches into what ``run`` takes.
    Each image must get ``num_classes`` (when given) finite logits
    (:func:`~resdist.deploy.runtime.check_logits`)."""
    from ..engine.metrics import topk_correct

    totals = np.zeros(4, dtype=np.float64)
    for images, labels in loader:
        logits = run(feed(images.detach().to("cpu", torch.float32).contiguous().numpy()))
        out = torch.from_numpy(check_logits(logits, len(labels), num_classes, source))
        y = labels.detach().cpu()
        if int(y.max()) >= out.shape[1]:
            raise DeployError(
                f"{source}: the model outputs {out.shape[1]} logits, fewer than the data set's "
                f"labels (up to {int(y.max())}); evaluate it on the data set it was trained on"
            )
        c1, c5 = topk_correct(out, y)
        totals += [float(F.cross_entropy(out, y, reduction="sum")), float(c1), float(c5),
                   float(y.numel())]
    n = max(totals[3], 1.0)
    return {"loss": totals[0] / n, "top1": 100.0 * totals[1] / n,
            "top5": 100.0 * totals[2] / n, "samples": int(totals[3])}


def _feeder(contract: InputContract | None,
            normalization: tuple[Sequence[float], Sequence[float]] | None
            ) -> Callable[[np.ndarray], np.ndarray]:
    """Normalised float batches -> what the graph takes, per its contract."""
    if contract is None or not contract.normalized_inside:
        return lambda x: x
    if normalization is None:
        raise DeployError("the graph normalises its input itself: evaluating it needs the "
                          "loader's mean and std")
    mean = np.asarray(normalization[0], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(normalization[1], dtype=np.float32).reshape(1, -1, 1, 1)

    def feed(x: np.ndarray) -> np.ndarray:
        pixels = x * std + mean  # back to [0, 1]
        if contract.input_dtype == "uint8":
            return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(pixels, dtype=np.float32)

    return feed


def evaluate_export_file(
    path: str | os.PathLike,
    data: Any = None,
    *,
    trust: bool = False,
    data_dir: str | None = None,
    download: bool | None = None,
    batch_size: int | None = None,
    limit_test: int | None = None,
    threads: int | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate an exported file, run in its own runtime, on the test set of a data set.

    The images are prepared as the file's input contract says, by the same function as for a
    checkpoint (:func:`resdist.data.eval_data.eval_data`: data set, recorded data folder,
    image size, resize, interpolation, mean/std, classes); an ImageFolder needs only its
    ``val/`` split. ``overrides`` (``data.key=value``, as ``--set``) change any data setting.
    A format whose files carry code (TorchScript) is run only with ``trust``; contracts are
    read without running anything.

    Args:
        path: the exported file (fp32 or INT8, any format of
            :data:`resdist.deploy.formats.FORMATS`).
        data: a data set name or :class:`~resdist.config.DataConfig`; None: the contract's
            data set (or, for a file that records no contract, the one it names, as INT8
            exports name their calibration data).
        data_dir, download, batch_size, limit_test: as in ``resdist eval``.
        threads: the runtime's intra-op threads.

    Returns:
        The metrics of :func:`score_batches` plus ``data`` (the data set), ``precision``
        (``"fp32"``/``"int8"``), ``format``, ``path`` and ``preprocessing`` (one line: the
        images and what was applied to them).
    """
    from ..data.eval_data import contract_for_settings, eval_data

    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise DeployError(f"{path} is not an exported model; evaluate checkpoints with "
                          "resdist eval --checkpoint")
    run = fmt.load_runner(path, threads, trust) if fmt.runs_code else None
    contract = fmt.read_contract(path)
    info = fmt.file_info(path)
    run = run or fmt.load_runner(path, threads)
    if contract is None:  # a bare graph: the data set named, at the graph's input shape
        name = data if data is not None else info.data
        if name is None:
            raise DeployError(f"{path.name} does not say which data set it was trained on; "
                              "pass --data NAME")
        contract = contract_for_settings(_data_of_shape(name, info.input_shape))
    prepared = eval_data(contract, data=data, data_dir=data_dir, download=bool(download),
                         batch_size=batch_size, limit=limit_test, overrides=overrides)
    want, have = info.input_shape or tuple(contract.input_shape), prepared.input_shape
    if tuple(want) != have:
        raise DeployError(
            f"{path.name} takes {'x'.join(map(str, want))} inputs but {prepared.data.name} "
            f"images are {'x'.join(map(str, have))}; evaluate it on the data set it was "
            "exported for")
    metrics: dict[str, Any] = score_batches(
        run, prepared.loader, _feeder(contract, (prepared.mean, prepared.std)),
        num_classes=len(contract.class_names) if contract and contract.class_names else None,
        source=str(path))
    metrics.update({"data": prepared.data.name, "precision": info.precision, "format": fmt.name,
                    "path": str(path), "preprocessing": prepared.describe()})
    return metrics


def _data_of_shape(data: Any, shape: tuple[int, int, int] | None) -> Any:
    """The data settings (a name or DataConfig) with a graph's fixed input shape, where the
    data set's image size can vary."""
    from ..config import DataConfig

    cfg = DataConfig(name=data) if isinstance(data, str) else data
    if shape is None:
        return cfg
    c, h, _ = shape
    if cfg.name == "imagefolder":
        return replace(cfg, image_size=h)
    if cfg.name == "synthetic":
        return replace(cfg, synthetic_size=h, synthetic_channels=c)
    return cfg


def evaluate_onnx_file(path: str | os.PathLike, data: Any = None, **kwargs: Any
                       ) -> dict[str, Any]:
    """:func:`evaluate_export_file` of an ONNX file (fp32 or INT8, run with ONNX Runtime)."""
    if Path(path).suffix.lower() != ".onnx" and model_file_kind(path) != "onnx":
        raise DeployError(f"{path} is not an ONNX file")
    return evaluate_export_file(path, data, **kwargs)


def evaluate_torchscript_file(path: str | os.PathLike, data: Any = None, *, trust: bool = False,
                              **kwargs: Any) -> dict[str, Any]:
    """:func:`evaluate_export_file` of a TorchScript export: run only with ``trust``, as
    loading one runs the code it carries."""
    return evaluate_export_file(path, data, trust=trust, **kwargs)
