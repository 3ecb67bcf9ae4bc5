"""Static INT8 quantisation of an fp32 ONNX model with ``onnxruntime.quantization`` (QDQ,
per-channel INT8 weights, uint8 activations calibrated on given batches)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .._onnx_graph import graph_inputs, load_onnx
from ..errors import DeployError, require
from ..formats.onnx import count_feature_adds, save_onnx
from ..quiet import quiet
from .calibration import calibration_reader

DATA_METADATA_KEY = "resdist.data"
"""ONNX ``metadata_props`` key naming the data set a model was calibrated on (read by eval)."""

_METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
"""``calibrate_method`` values and their ``onnxruntime.quantization.CalibrationMethod``."""


@dataclass
class QuantizeReport:
    """What :func:`quantize_onnx` wrote and what is in the quantised graph.

    Attributes:
        path: the INT8 model (None where the report does not name files).
        fp32_path: the fp32 model it was made from (None once that was a deleted temporary).
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

    path: str | None
    fp32_path: str | None
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

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> QuantizeReport:
        """The report back from :meth:`as_dict` (``path`` and ``fp32_path`` may be left out)."""
        fields = {k: v for k, v in d.items() if k != "size_ratio"}
        return cls(**{"path": None, "fp32_path": None, **fields})


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


def _check_request(fp32_path: Path, calibrate_method: str) -> None:
    if not fp32_path.is_file():
        raise DeployError(f"ONNX file not found: {fp32_path}")
    if calibrate_method not in _METHODS:
        raise DeployError(f"calibrate_method must be one of {', '.join(_METHODS)}, "
                          f"got {calibrate_method!r}")


def _run_quantiser(
    fp32_path: Path, int8_path: Path, reader: Any, fed: Callable[[], int | None],
    per_channel: bool, calibrate_method: str, reduce_range: bool = False,
) -> None:
    """``quant_pre_process`` then ``quantize_static`` into ``int8_path``; the tool's own
    failures become one :class:`DeployError` line."""
    ort_quant = require("onnxruntime.quantization")
    from onnxruntime.quantization.shape_inference import quant_pre_process

    method = getattr(ort_quant.CalibrationMethod, _METHODS[calibrate_method])
    pre = int8_path.with_name("preprocessed.onnx")
    try:
        with quiet(""):  # its progress prints and INFO logging
            quant_pre_process(os.fspath(fp32_path), os.fspath(pre))
            ort_quant.quantize_static(
                os.fspath(pre), os.fspath(int8_path), reader,
                quant_format=ort_quant.QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=ort_quant.QuantType.QUInt8,
                weight_type=ort_quant.QuantType.QInt8,
                calibrate_method=method,
            )
    except DeployError:
        raise
    except Exception as e:  # the tool's own failure
        if fed() == 0:
            raise DeployError("the calibration data yielded no images") from e
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DeployError(f"INT8 quantisation of {fp32_path} failed: {detail}") from e


def _save_with_metadata(src: Path, path: Path, metadata: Mapping[str, str]) -> None:
    """``src`` with ``metadata`` added to its metadata_props, written atomically to ``path``."""
    onnx = require("onnx")
    model = onnx.load(os.fspath(src))
    props = {p.key: p.value for p in model.metadata_props}
    props.update({str(k): str(v) for k, v in metadata.items()})
    onnx.helper.set_model_props(model, props)
    save_onnx(model, path)


def quantize_onnx(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calibration: Any,
    *,
    per_channel: bool = True,
    calibrate_method: str = "minmax",
    metadata: Mapping[str, str] | None = None,
    calibration_source: str = "",
    reduce_range: bool = False,
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
        reduce_range: 7-bit weights (ONNX Runtime's ``reduce_range``), for x86 CPUs without
            VNNI, whose u8s8 kernels can otherwise saturate their 16-bit sums.

    Returns:
        A :class:`QuantizeReport` (shortcut-Add count, Q/DQ counts, file sizes).
    """
    require("onnx")
    require("onnxruntime.quantization")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    _check_request(fp32_path, calibrate_method)
    reader, fed = calibration_reader(calibration, _input_name(fp32_path))
    with tempfile.TemporaryDirectory(prefix="resdist-quant-") as tmp:
        int8 = Path(tmp) / "int8.onnx"
        _run_quantiser(fp32_path, int8, reader, fed, per_channel, calibrate_method,
                       reduce_range)
        _save_with_metadata(int8, out_path, metadata or {})  # atomic: never half-written
    return QuantizeReport(
        path=str(out_path),
        fp32_path=str(fp32_path),
        feature_adds=count_feature_adds(out_path),
        fp32_feature_adds=count_feature_adds(fp32_path),
        fp32_bytes=fp32_path.stat().st_size,
        int8_bytes=out_path.stat().st_size,
        calibration_images=fed(),
        calibration=calibration_source,
        settings={
            "tool": "onnxruntime.quantization (quant_pre_process + quantize_static)",
            "format": "QDQ", "weights": "QInt8", "activations": "QUInt8",
            "per_channel": per_channel, "calibrate_method": calibrate_method,
            "reduce_range": reduce_range,
        },
        **count_qdq(out_path),
    )
