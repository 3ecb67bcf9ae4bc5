"""Evaluate an exported ONNX model (fp32 or INT8) with ONNX Runtime on a resdist test set.

The images go through the same reading and preprocessing as in training and in
``resdist eval`` of a checkpoint (:func:`resdist.data.build_data`), and the metrics are those of
:func:`resdist.engine.evaluate` (top-1, top-5, mean cross-entropy), so the figures of a
checkpoint and of its fp32 export agree.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..data.contract import InputContract
from ._onnx_graph import graph_inputs, load_onnx, value_shapes
from .errors import DeployError, require
from .runtime import check_logits, cpu_session, session_runner

__all__ = ["evaluate_onnx", "evaluate_onnx_file", "evaluate_torchscript_file", "model_file_kind",
           "onnx_input_shape", "score_batches"]


def _parse_onnx(path: Path) -> Any | None:
    """The ModelProto in ``path`` if it is a real ONNX model (a graph with nodes), else None."""
    onnx = require("onnx")
    try:
        model = onnx.load(os.fspath(path))
    except PermissionError as e:
        raise DeployError(f"cannot read {path}: permission denied; make the file readable "
                          "(chmod a+r) or use a copy you may read") from e
    except Exception:
        return None
    if not model.HasField("graph") or not model.graph.node or model.ir_version < 1:
        return None
    return model


def model_file_kind(path: str | os.PathLike) -> Literal["checkpoint", "onnx"]:
    """Whether ``path`` holds a resdist checkpoint (a run folder or a torch zip archive) or an
    ONNX model. A missing path, or a file that is not ONNX, counts as a checkpoint (its loader
    then says what is wrong with it) unless it ends in ``.onnx``: a missing or unreadable
    ``.onnx`` file raises :class:`DeployError`."""
    path = Path(path)
    if not path.exists() and path.suffix.lower() == ".onnx":
        raise DeployError(f"ONNX file not found: {path}")
    if path.is_dir() or not path.exists():
        return "checkpoint"
    if zipfile.is_zipfile(path):
        return "checkpoint"
    if _parse_onnx(path) is not None:
        return "onnx"
    if path.suffix.lower() != ".onnx":
        return "checkpoint"  # its loader says what is wrong with it (corrupt, refused, ...)
    raise DeployError(
        f"cannot read {path}: not an ONNX model, or truncated (a .pth written by resdist train "
        "or an .onnx written by resdist export is expected); export it again"
    )


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
    run = session_runner(cpu_session(path, threads), path)
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


def evaluate_onnx_file(
    path: str | os.PathLike,
    data: Any = None,
    *,
    data_dir: str | None = None,
    download: bool | None = None,
    batch_size: int | None = None,
    limit_test: int | None = None,
    threads: int | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate an ONNX model on the test set of a resdist data set.

    The images are prepared as the file's input contract says: an ImageFolder at the
    contract's input size, synthetic data of its shape and class count; ``overrides``
    (``data.key=value``, as ``--set``) change any data setting.

    Args:
        path: the ``.onnx`` file (fp32 or INT8).
        data: a data set name or :class:`~resdist.config.DataConfig`; None reads the name from
            the model's metadata (``resdist.data``, written by INT8 export).
        data_dir, download, batch_size, limit_test: as in ``resdist eval``.
        threads: ONNX Runtime intra-op threads.

    Returns:
        The metrics of :func:`evaluate_onnx` plus ``data`` (the data set), ``precision``
        (``"int8"`` when the graph holds ``QuantizeLinear`` nodes, else ``"fp32"``) and
        ``path``.
    """
    from ..data.contract import contract_from_bundle
    from .export import read_contract
    from .quantize import DATA_METADATA_KEY

    path = Path(path)
    proto = load_onnx(path)
    contract = read_contract(path)
    if data is None:
        props = {p.key: p.value for p in proto.metadata_props}
        data = props.get(DATA_METADATA_KEY) or None
    bundle, cfg = _test_data(path, contract, data, data_dir=data_dir, download=download,
                             batch_size=batch_size, limit_test=limit_test, overrides=overrides)
    # a graph of any input size is fed what its contract says, as predict feeds it
    want = onnx_input_shape(proto) or (tuple(contract.input_shape) if contract else None)
    have = (bundle.in_chans, bundle.image_size, bundle.image_size)
    if want is not None and want != have:
        raise DeployError(
            f"{path.name} takes {want[0]}x{want[1]}x{want[2]} inputs but {cfg.name} images are "
            f"{have[0]}x{have[1]}x{have[2]}; evaluate it on the data set it was exported for"
        )
    loader_contract = contract_from_bundle(bundle)
    metrics: dict[str, Any] = evaluate_onnx(
        path, bundle.test, threads=threads, contract=contract,
        normalization=(loader_contract.mean, loader_contract.std),
        num_classes=len(contract.class_names) if contract and contract.class_names else None)
    int8 = any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in proto.graph.node)
    metrics.update({"data": cfg.name, "precision": "int8" if int8 else "fp32",
                    "path": str(path)})
    return metrics


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


def evaluate_torchscript_file(
    path: str | os.PathLike,
    data: Any = None,
    *,
    trust: bool = False,
    data_dir: str | None = None,
    download: bool | None = None,
    batch_size: int | None = None,
    limit_test: int | None = None,
    overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate a TorchScript file from ``resdist export`` like :func:`evaluate_onnx_file`.

    Loading a TorchScript file runs the code it carries, so it is refused unless ``trust``
    (``--trust-torchscript``); its contract is read from the archive without loading it.
    """
    from ..data.contract import contract_from_bundle
    from .export import read_contract
    from .predict import torchscript_runner

    path = Path(path)
    run = torchscript_runner(path, trust, "evaluate its checkpoint or ONNX export")
    contract = read_contract(path)
    bundle, cfg = _test_data(path, contract, data, data_dir=data_dir, download=download,
                             batch_size=batch_size, limit_test=limit_test, overrides=overrides)
    loader_contract = contract_from_bundle(bundle)
    metrics: dict[str, Any] = score_batches(
        run, bundle.test, _feeder(contract, (loader_contract.mean, loader_contract.std)))
    metrics.update({"data": cfg.name, "precision": "fp32", "path": str(path)})
    return metrics
