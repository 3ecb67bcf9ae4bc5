"""Evaluate an exported model (any registered format, fp32 or INT8) in its own runtime on a
resdist test set.

The images go through the same reading and preprocessing as in training and in
``resdist eval`` of a checkpoint (:func:`resdist.data.build_data`), and the metrics are those of
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


def _data_like_contract(cfg: Any, contract: InputContract) -> Any:
    """``cfg`` with the image geometry the contract records (where the data set lets it vary)."""
    c, h, _ = contract.input_shape
    if cfg.name == "imagefolder":
        return replace(cfg, image_size=h)
    if cfg.name == "synthetic":
        return replace(cfg, synthetic_size=h, synthetic_channels=c,
                       synthetic_classes=max(2, len(contract.class_names) or 2))
    return cfg


def _override_data(cfg: Any, overrides: Sequence[str]) -> Any:
    """``cfg`` with ``data.key=value`` overrides applied (other sections are refused)."""
    from ..config import Config

    for item in overrides:
        if not item.strip().startswith("data."):
            raise DeployError(f"--set {item}: evaluating an ONNX file takes data.* settings "
                              "only")
    whole = Config(data=replace(cfg)).override(list(overrides))
    whole.data.check()
    return whole.data


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

    The images are prepared as the file's input contract says: an ImageFolder at the
    contract's input size, synthetic data of its shape and class count; ``overrides``
    (``data.key=value``, as ``--set``) change any data setting. A format whose files carry
    code (TorchScript) is run only with ``trust``; contracts are read without running anything.

    Args:
        path: the exported file (fp32 or INT8, any format of
            :data:`resdist.deploy.formats.FORMATS`).
        data: a data set name or :class:`~resdist.config.DataConfig`; None reads the name the
            file records (INT8 exports record their calibration data), else its contract's.
        data_dir, download, batch_size, limit_test: as in ``resdist eval``.
        threads: the runtime's intra-op threads.

    Returns:
        The metrics of :func:`score_batches` plus ``data`` (the data set), ``precision``
        (``"fp32"``/``"int8"``), ``format`` and ``path``.
    """
    from ..data.contract import contract_from_bundle

    path = Path(path)
    fmt = format_of(path)
    if fmt is None:
        raise DeployError(f"{path} is not an exported model; evaluate checkpoints with "
                          "resdist eval --checkpoint")
    run = fmt.load_runner(path, threads, trust) if fmt.runs_code else None
    contract = fmt.read_contract(path)
    info = fmt.file_info(path)
    run = run or fmt.load_runner(path, threads)
    bundle, cfg = _test_data(path, contract, data if data is not None else info.data,
                             data_dir=data_dir, download=download, batch_size=batch_size,
                             limit_test=limit_test, overrides=overrides)
    have = (bundle.in_chans, bundle.image_size, bundle.image_size)
    # a graph of any input size is fed what its contract says, as predict feeds it
    want = info.input_shape or (tuple(contract.input_shape) if contract else None)
    if want is not None and want != have:
        raise DeployError(
            f"{path.name} takes {want[0]}x{want[1]}x{want[2]} inputs but {cfg.name} images are "
            f"{have[0]}x{have[1]}x{have[2]}; evaluate it on the data set it was exported for"
        )
    loader_contract = contract_from_bundle(bundle)
    metrics: dict[str, Any] = score_batches(
        run, bundle.test, _feeder(contract, (loader_contract.mean, loader_contract.std)),
        num_classes=len(contract.class_names) if contract and contract.class_names else None,
        source=str(path))
    metrics.update({"data": cfg.name, "precision": info.precision, "format": fmt.name,
                    "path": str(path)})
    return metrics


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


def _test_data(path: Path, contract: InputContract | None, data: Any, *, data_dir, download,
               batch_size, limit_test, overrides: Sequence[str]) -> tuple[Any, Any]:
    """``(bundle, data config)`` of the test split an exported file is scored on: ``data`` (a
    name or DataConfig), else the data set its contract names, shaped like the contract."""
    from ..config import DATASETS, DataConfig, check_choice
    from ..data import build_data
    from ..engine.evaluation import apply_eval_args

    if data is None:
        data = contract.dataset if contract is not None else None
        if not data:
            raise DeployError(
                f"{path.name} does not say which data set it was trained on; pass --data NAME"
            )
    cfg = DataConfig(name=data) if isinstance(data, str) else data
    check_choice("data.name", cfg.name, DATASETS, "data set", DeployError)
    if isinstance(data, str) and contract is not None:
        cfg = _data_like_contract(cfg, contract)
    cfg = _override_data(cfg, overrides)
    # the training loader is built but unused here: batch 1 so that any training split fits
    cfg = apply_eval_args(replace(cfg, val_split=0.0, augment=False, batch_size=1),
                          data_dir=data_dir, download=download, batch_size=batch_size,
                          limit_test=limit_test)
    return build_data(cfg, device="cpu"), cfg


