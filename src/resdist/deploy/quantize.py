"""INT8 deployment: static post-training quantisation with ONNX Runtime's own tool.

:func:`quantize_onnx` takes an fp32 ONNX model (as written by :func:`~resdist.deploy.export_onnx`)
through ``onnxruntime.quantization``: its model pre-processing step (``quant_pre_process``:
shape inference and graph clean-up), then ``quantize_static`` in QDQ format with per-channel
signed INT8 weights and unsigned INT8 activations whose ranges are calibrated (MinMax) on the
batches a :class:`~onnxruntime.quantization.CalibrationDataReader` (or any iterable of
arrays) yields. :func:`calibration_batches` draws those batches from a resdist data set's
training split with the training preprocessing but no random augmentation, so nothing of the
test set is seen. :func:`quantize_checkpoint` is the whole path from a checkpoint.

Activations are ``QUInt8`` (U8S8), not the tool's default ``QInt8``: ONNX Runtime's CPU
provider (1.32) turns a QDQ ``Add`` into ``QLinearAdd`` only for uint8, so with int8
activations every shortcut ``Add`` of a ResNet, and the convolution feeding it, stays in fp32
(ResNet-18: 11 of 20 convolutions), which would make the INT8 ResNet look slow for a reason
that has nothing to do with shortcuts. With uint8 every convolution becomes ``QLinearConv``.
On x86 CPUs without VNNI, U8S8 can saturate (ONNX Runtime documents ``reduce_range`` for that);
the CPUs measured here have AVX512-VNNI.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..models.fold import to_deploy
from ._onnx_graph import graph_inputs, load_onnx
from .errors import DeployError, require
from .export import (
    DEFAULT_OPSET,
    count_feature_adds,
    export_onnx,
    load_model_source,
    save_onnx,
)
from .quiet import quiet
from .runtime import cpu_session

__all__ = [
    "DATA_METADATA_KEY", "DEFAULT_CALIBRATION_IMAGES", "QuantizeReport", "calibration_batches",
    "add_int8_latency", "count_qdq", "format_int8_table", "gaussian_batches",
    "quantize_checkpoint", "quantize_onnx",
]

DEFAULT_CALIBRATION_IMAGES = 512
"""Training images whose activation ranges set the INT8 scales (``--calibration-images``)."""

DATA_METADATA_KEY = "resdist.data"
"""ONNX ``metadata_props`` key naming the data set a model was calibrated on (read by eval)."""


@dataclass
class QuantizeReport:
    """What :func:`quantize_onnx` wrote and what is in the quantised graph.

    Attributes:
        path: the INT8 model.
        fp32_path: the fp32 model it was made from (may be a deleted temporary file).
        feature_adds: Adds of two feature maps in the INT8 graph (shortcuts; 0 for a plain net).
        fp32_feature_adds: the same count in the fp32 graph.
        quantize_nodes, dequantize_nodes: ``QuantizeLinear`` / ``DequantizeLinear`` nodes.
        activation_qdq_pairs: ``QuantizeLinear -> DequantizeLinear`` pairs on activations.
        weight_dequantize: ``DequantizeLinear`` nodes reading an INT8 initializer (weights).
        fp32_bytes, int8_bytes: file sizes.
        calibration_images: images the activation ranges were calibrated on (None when a
            user's ``CalibrationDataReader`` fed them).
        calibration: where the calibration images came from.
        settings: the quantiser's settings (format, types, per-channel, calibration method).
    """

    path: str
    fp32_path: str
    feature_adds: int
    fp32_feature_adds: int
    quantize_nodes: int
    dequantize_nodes: int
    activation_qdq_pairs: int
    weight_dequantize: int
    fp32_bytes: int
    int8_bytes: int
    calibration_images: int | None
    calibration: str
    settings: dict[str, Any]

    @property
    def size_ratio(self) -> float:
        """fp32 file size / INT8 file size."""
        return self.fp32_bytes / max(self.int8_bytes, 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict, with ``size_ratio``."""
        out = asdict(self)
        out["size_ratio"] = self.size_ratio
        return out


def count_qdq(onnx_model_or_path: Any) -> dict[str, int]:
    """Counts of Q/DQ nodes in a QDQ graph.

    Returns ``quantize_nodes``, ``dequantize_nodes``, ``activation_qdq_pairs`` (a
    ``QuantizeLinear`` whose output feeds a ``DequantizeLinear``: one quantised activation
    edge) and ``weight_dequantize`` (a ``DequantizeLinear`` reading an initializer: one
    quantised weight or bias).
    """
    model = load_onnx(onnx_model_or_path)
    g = model.graph
    inits = {t.name for t in g.initializer}
    q_outputs = {o for n in g.node if n.op_type == "QuantizeLinear" for o in n.output}
    dq = [n for n in g.node if n.op_type == "DequantizeLinear"]
    return {
        "quantize_nodes": sum(n.op_type == "QuantizeLinear" for n in g.node),
        "dequantize_nodes": len(dq),
        "activation_qdq_pairs": sum(n.input[0] in q_outputs for n in dq),
        "weight_dequantize": sum(n.input[0] in inits for n in dq),
    }


def _input_name(path: Path) -> str:
    inputs = graph_inputs(load_onnx(path))
    if len(inputs) != 1:
        raise DeployError(f"{path}: expected a graph with one input, found {len(inputs)}")
    return inputs[0].name


def _reader(calibration: Any, input_name: str) -> tuple[Any, Callable[[], int | None]]:
    """A CalibrationDataReader over ``calibration`` and a function giving the images it fed."""
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


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: Any,
    *,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    metadata: Mapping[str, str] | None = None,
    calibration_source: str = "",
) -> QuantizeReport:
    """Statically quantise an fp32 ONNX model to INT8 (QDQ) with ONNX Runtime's tool.

    Args:
        fp32_path: the fp32 model (one float input ``(N, C, H, W)``).
        out_path: where the INT8 model goes.
        calibration: an ``onnxruntime.quantization.CalibrationDataReader``, or an iterable of
            ``(N, C, H, W)`` float arrays/tensors, preprocessed exactly as at inference.
        per_channel: one weight scale per output channel (else per tensor).
        calibrate_method: ``"minmax"``, ``"entropy"`` or ``"percentile"``.
        metadata: extra ``metadata_props`` to store in the INT8 model.
        calibration_source: a description of the calibration data, kept in the report.

    Returns:
        A :class:`QuantizeReport` (shortcut-Add count, Q/DQ counts, file sizes).
    """
    require("onnx")
    ort_quant = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise DeployError(f"ONNX file not found: {fp32_path}")
    methods = {
        "minmax": ort_quant.CalibrationMethod.MinMax,
        "entropy": ort_quant.CalibrationMethod.Entropy,
        "percentile": ort_quant.CalibrationMethod.Percentile,
    }
    if calibrate_method not in methods:
        raise DeployError(
            f"calibrate_method must be one of {', '.join(methods)}, got {calibrate_method!r}"
        )
    reader, fed = _reader(calibration, _input_name(fp32_path))
    with tempfile.TemporaryDirectory(prefix="resdist-quant-") as tmp:
        pre, int8 = Path(tmp) / "preprocessed.onnx", Path(tmp) / "int8.onnx"
        try:
            with quiet(""):  # its progress prints and INFO logging
                quant_pre_process(os.fspath(fp32_path), os.fspath(pre))
                ort_quant.quantize_static(
                    os.fspath(pre), os.fspath(int8), reader,
                    quant_format=ort_quant.QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=ort_quant.QuantType.QUInt8,
                    weight_type=ort_quant.QuantType.QInt8,
                    calibrate_method=methods[calibrate_method],
                )
        except DeployError:
            raise
        except Exception as e:  # the tool's own failure
            if fed() == 0:
                raise DeployError("the calibration data yielded no images") from e
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DeployError(f"INT8 quantisation of {fp32_path} failed: {detail}") from e
        _save_with_metadata(int8, out_path, metadata or {})  # atomic: never half-written
    images = fed()
    counts = count_qdq(out_path)
    return QuantizeReport(
        path=str(out_path),
        fp32_path=str(fp32_path),
        feature_adds=count_feature_adds(out_path),
        fp32_feature_adds=count_feature_adds(fp32_path),
        fp32_bytes=fp32_path.stat().st_size,
        int8_bytes=out_path.stat().st_size,
        calibration_images=images,
        calibration=calibration_source,
        settings={
            "tool": "onnxruntime.quantization (quant_pre_process + quantize_static)",
            "format": "QDQ", "weights": "QInt8", "activations": "QUInt8",
            "per_channel": per_channel, "calibrate_method": calibrate_method,
        },
        **counts,
    )


def _save_with_metadata(src: Path, path: Path, metadata: Mapping[str, str]) -> None:
    """``src`` with ``metadata`` added to its metadata_props, written atomically to ``path``."""
    onnx = require("onnx")
    model = onnx.load(os.fspath(src))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({str(k): str(v) for k, v in metadata.items()})
    onnx.helper.set_model_props(model, props)
    save_onnx(model, path)


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
    from ..config import DataConfig
    from ..data import build_data
    from ..data.locations import DATASET_NAMES

    if isinstance(data, str):
        data = DataConfig(name=data)
    if data.name not in DATASET_NAMES:
        raise DeployError(
            f"unknown data set {data.name!r} for calibration; choose one of "
            f"{', '.join(DATASET_NAMES)}"
        )
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


def quantize_checkpoint(
    checkpoint_or_model: Any,
    out: str | os.PathLike,
    calibration_data: Any = None,
    *,
    data_dir: str | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    input_shape: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    per_channel: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Fold, export to fp32 ONNX and quantise to INT8, calibrating on real training images.

    ``calibration_data`` names the data set (or is a :class:`~resdist.config.DataConfig`);
    None means the one a checkpoint's run trained on. When a checkpoint trained on that data
    set is given, its data settings (``limit_train``, ``val_split``, image size, folder) are
    used, so the calibration images are training images of that run. The INT8 file records the
    checkpoint's input contract (``input_contract``) and the data set (``resdist.data``), like
    an fp32 export. Returns :meth:`QuantizeReport.as_dict` plus ``model``, ``input_shape`` and
    the fp32 top-1 agreement of the INT8 model on the calibration images
    (``calibration_agreement``).
    """
    from ..config import DataConfig
    from .export import CONTRACT_KEY

    ckpt = None
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from ..engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint_or_model)
    model, shape, name, contract = load_model_source(
        ckpt if ckpt is not None else checkpoint_or_model, input_shape, with_contract=True)
    run_data = ckpt.run_config().data if ckpt is not None and ckpt.config else None
    if calibration_data is None:
        if run_data is None:
            raise DeployError("INT8 quantisation needs calibration data: name the data set "
                              "(--calibration-data) whose training images set the scales")
        calibration_data = run_data.name
    if isinstance(calibration_data, str):
        data_cfg = DataConfig(name=calibration_data)
        if run_data is not None and run_data.name == calibration_data:
            data_cfg = run_data
    else:
        data_cfg = calibration_data
    if data_dir is not None:
        data_cfg = replace(data_cfg, data_dir=data_dir)
    batches = calibration_batches(data_cfg, calibration_images, seed=seed)
    if shape is None:
        shape = tuple(batches[0].shape[1:])
    if tuple(batches[0].shape[1:]) != tuple(shape):
        raise DeployError(
            f"calibration images of {data_cfg.name} have shape {tuple(batches[0].shape[1:])}, "
            f"the model takes {tuple(shape)}"
        )
    metadata = {DATA_METADATA_KEY: data_cfg.name}
    if contract is not None:
        metadata[CONTRACT_KEY] = contract.to_json()
    with tempfile.TemporaryDirectory(prefix="resdist-export-") as tmp:
        fp32 = export_onnx(to_deploy(model), Path(tmp) / "fp32.onnx", shape, opset=opset,
                           deploy=False)
        report = quantize_onnx(
            fp32, out, batches, per_channel=per_channel, metadata=metadata,
            calibration_source=f"{data_cfg.name} training split, no augmentation, seed {seed}",
        )
        agreement = _agreement(fp32, Path(out), batches)
    result = report.as_dict()
    result["fp32_path"] = None
    result.update({"model": name, "input_shape": list(shape), "format": "onnx-int8",
                   "opset": opset, "calibration_agreement": agreement,
                   "input_contract": contract.to_dict() if contract is not None else None})
    return result


def _agreement(fp32: Path, int8: Path, batches: Sequence[np.ndarray]) -> float:
    """Fraction of images whose INT8 top-1 class equals the fp32 one."""
    sessions = [cpu_session(p) for p in (fp32, int8)]
    name = sessions[0].get_inputs()[0].name
    same = total = 0
    for x in batches:
        a, b = (s.run(None, {name: x})[0].argmax(1) for s in sessions)
        same += int((a == b).sum())
        total += len(x)
    return same / max(total, 1)



# --- INT8 latency beside fp32 (``resdist profile --int8``) ------------------------------------

def _profile_calibration(
    rec: Mapping[str, Any], shape: Sequence[int], num_images: int, seed: int
) -> tuple[list[np.ndarray], str]:
    """Calibration batches for a profiled model: the training images of a checkpoint's run
    when they can be read, else Gaussian images (random weights have no data set)."""
    source = str(rec.get("source", ""))
    if source.startswith("checkpoint "):
        from ..engine.checkpoint import load_checkpoint
        from ..errors import ResdistError

        ckpt = load_checkpoint(source.split(" ", 1)[1])
        if ckpt.config:
            data = ckpt.run_config().data
            try:
                batches = calibration_batches(data, num_images, seed=seed)
            except ResdistError as e:
                return (gaussian_batches(shape, num_images, seed=seed),
                        f"{num_images} Gaussian images ({data.name} not readable: {e})")
            if tuple(batches[0].shape[1:]) == tuple(shape):
                n = sum(len(b) for b in batches)
                return batches, f"{n} {data.name} training images"
    return (gaussian_batches(shape, num_images, seed=seed),
            f"{num_images} Gaussian images (after the BN calibration of random weights)"
            if rec.get("source") == "registry" else f"{num_images} Gaussian images")


def add_int8_latency(
    result: dict[str, Any],
    onnx_dir: str | os.PathLike,
    *,
    batch_sizes: Sequence[int] = (1, 8, 32),
    threads: Sequence[int | None] = (1, None),
    runs: int | Mapping[int, int] = 20,
    warmup: int = 2,
    min_runs: int = 3,
    max_seconds: float | None = None,
    calibration_images: int = 64,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Quantise every model of a :func:`~resdist.deploy.profile_models` result (run with
    ``onnx_dir`` and ``latency=False``) and time fp32 and INT8 side by side.

    All fp32 and INT8 sessions are timed in one interleaved run
    (:func:`~resdist.deploy.measure_latency`). Fills each model's ``latency`` (fp32) and
    ``int8`` (``path``-free quantisation report, ``calibration``, ``latency``, and
    ``speedup``: fp32 / INT8 median per setting) and each pair's ``latency_ratio`` and
    ``latency_ratio_int8`` (ResNet / plain). Returns ``result``.
    """
    from .profile import measure_latency

    onnx_dir = Path(onnx_dir)
    paths: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for rec in result["models"]:
        shape = tuple(rec["input_shape"])
        fp32 = onnx_dir / rec["onnx_file"]
        int8 = fp32.with_name(f"{fp32.stem}-int8.onnx")
        batches, described = _profile_calibration(rec, shape, calibration_images, seed)
        report = quantize_onnx(fp32, int8, batches, calibration_source=described).as_dict()
        for key in ("path", "fp32_path"):
            report.pop(key)
        rec["int8"] = {**report, "latency": []}
        paths[rec["name"]], paths[f"{rec['name']} [int8]"] = fp32, int8
        shapes[rec["name"]] = shapes[f"{rec['name']} [int8]"] = shape
        if log:
            log(f"{rec['name']}: quantised to INT8 ({described}), {report['feature_adds']} "
                "feature Adds")
    by_name = {r["name"]: r for r in result["models"]}
    for record in measure_latency(paths, shapes, batch_sizes, threads, runs, warmup, min_runs,
                               max_seconds, seed=seed, log=log):
        name, lat = record.model, record.as_dict()
        if name.endswith(" [int8]"):
            by_name[name[: -len(" [int8]")]]["int8"]["latency"].append(lat)
        else:
            by_name[name]["latency"].append(lat)
    for rec in result["models"]:
        fp32_ms = _medians(rec["latency"])
        int8_ms = _medians(rec["int8"]["latency"])
        rec["int8"]["speedup"] = [{"threads": k[0], "batch": k[1], "ratio": fp32_ms[k] / v}
                                  for k, v in int8_ms.items() if k in fp32_ms and v]
    for pair in result.get("pairs", []):
        plain, res = by_name[pair["plain"]], by_name[pair["resnet"]]
        pair["latency_ratio"] = _ratios(res["latency"], plain["latency"])
        pair["latency_ratio_int8"] = _ratios(res["int8"]["latency"], plain["int8"]["latency"])
    result["meta"]["int8"] = (
        "onnxruntime.quantization static QDQ, per-channel QInt8 weights, QUInt8 activations "
        f"(MinMax), calibration on {calibration_images} images per model (see each model); "
        "fp32 and INT8 sessions timed interleaved in one run"
    )
    return result


def _medians(records: Iterable[Mapping[str, Any]]) -> dict[tuple[int, int], float]:
    return {(r["threads"], r["batch"]): r["median_ms"] for r in records}


def _ratios(
    resnet: Iterable[Mapping[str, Any]], plain: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    a, b = _medians(resnet), _medians(plain)
    return [{"threads": k[0], "batch": k[1], "ratio": a[k] / b[k]}
            for k in b if k in a and b[k]]


def format_int8_table(result: Mapping[str, Any]) -> str:
    """Markdown tables: fp32 vs INT8 median latency per model and setting (with the INT8
    speed-up), then ResNet / plain latency ratios in fp32 and in INT8."""
    settings = sorted({(r["threads"], r["batch"]) for m in result["models"]
                       for r in m.get("int8", {}).get("latency", [])})
    head = [f"t={t} b={b}" for t, b in settings]
    rows = []
    for m in result["models"]:
        fp32, int8 = _medians(m["latency"]), _medians(m.get("int8", {}).get("latency", []))
        cells = [m["name"], str(m.get("int8", {}).get("feature_adds", "-"))]
        for k in settings:
            if k in fp32 and k in int8:
                cells.append(f"{fp32[k]:.2f} / {int8[k]:.2f} ({fp32[k] / int8[k]:.2f}x)")
            else:
                cells.append("-")
        rows.append(cells)
    lines = ["| model | INT8 feature Adds | " + " | ".join(
        f"ms fp32 / INT8 (speed-up), {h}" for h in head) + " |",
        "|---|---:|" + "---:|" * len(settings)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    pairs = result.get("pairs", [])
    if pairs:
        lines += ["", "| ResNet / plain latency | " + " | ".join(
            f"fp32 / INT8, {h}" for h in head) + " |", "|---|" + "---:|" * len(settings)]
        for p in pairs:
            a = {(r["threads"], r["batch"]): r["ratio"] for r in p.get("latency_ratio", [])}
            b = {(r["threads"], r["batch"]): r["ratio"] for r in p.get("latency_ratio_int8", [])}
            cells = [f"{a[k]:.2f} / {b[k]:.2f}" if k in a and k in b else "-" for k in settings]
            lines.append(f"| {p['resnet']} / {p['plain']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
