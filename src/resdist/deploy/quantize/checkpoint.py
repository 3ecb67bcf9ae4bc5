"""The whole INT8 path from a checkpoint: fold, export to fp32 ONNX, quantise on the training
images of the checkpoint's run, and check the INT8 model against the fp32 one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ...data.contract import InputContract
from ...models.fold import to_deploy
from ..errors import DeployError
from ..exporter import ExportReport, load_model_source
from ..formats import FORMATS, check_export_contract, check_export_target
from ..formats.common import CONTRACT_KEY
from ..formats.onnx import DEFAULT_OPSET, export_onnx
from ..runtime import cpu_session
from .calibration import DEFAULT_CALIBRATION_IMAGES, calibration_batches
from .static import DATA_METADATA_KEY, QuantizeReport, quantize_onnx


@dataclass
class Int8Export:
    """What :func:`quantize_checkpoint` wrote.

    Attributes:
        quantization: the quantiser's report (``fp32_path`` None: the fp32 export was a
            temporary file).
        model: the network's name.
        input_shape: ``(C, H, W)`` of one image.
        opset: the ONNX opset of the fp32 export the INT8 model was made from.
        calibration_agreement: fraction of the calibration images whose INT8 top-1 class is
            the fp32 one.
        input_contract: the contract the INT8 file records (None if it records none).
        notes: advice on the result, one line each (e.g. low agreement on a CPU without VNNI).
    """

    quantization: QuantizeReport
    model: str
    input_shape: list[int]
    opset: int
    calibration_agreement: float
    input_contract: InputContract | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``resdist export --quantize int8`` prints: the quantiser's report, then
        ``model``, ``input_shape``, ``format`` (``"onnx-int8"``), ``opset``,
        ``calibration_agreement``, ``input_contract`` and ``notes``."""
        contract = self.input_contract
        return {**self.quantization.as_dict(), "model": self.model,
                "input_shape": self.input_shape, "format": "onnx-int8", "opset": self.opset,
                "calibration_agreement": self.calibration_agreement,
                "input_contract": contract.to_dict() if contract is not None else None,
                "notes": self.notes}


#: Below this INT8/fp32 top-1 agreement on the calibration images, an export on an x86 CPU
#: without VNNI suggests ``reduce_range`` (a ResNet-8 at 82% top-1 agreed on 86% of them with
#: 8-bit weights there and on 98% with 7-bit ones).
LOW_AGREEMENT = 0.95


def saturation_note(agreement: float, reduce_range: bool) -> str | None:
    """The advice to quantise again with 7-bit weights, when ``agreement`` is low on an x86 CPU
    without VNNI and the weights were 8-bit; else None."""
    from ...machine import x86_without_vnni

    if reduce_range or agreement >= LOW_AGREEMENT or not x86_without_vnni():
        return None
    return (f"the INT8 model agrees with fp32 on only {100 * agreement:.1f}% of the calibration "
            "images, and this CPU has no VNNI, where ONNX Runtime's u8s8 kernels can saturate: "
            "export again with --reduce-range (7-bit weights; reduce_range=True) and compare")


def _calibration_data(ckpt: Any, calibration_data: Any, contract: InputContract | None
                      ) -> Any:
    """The data settings to calibrate on (None: the contract's data set): the named data set,
    with the run's settings when the checkpoint's run trained on it."""
    from ...config import DataConfig

    run_data = ckpt.run_config().data if ckpt is not None and ckpt.config else None
    if calibration_data is None:
        if run_data is None and (contract is None or not contract.dataset):
            raise DeployError("INT8 quantisation needs calibration data: name the data set "
                              "(--calibration-data) whose training images set the scales")
        return run_data
    if isinstance(calibration_data, str):
        if run_data is not None and run_data.name == calibration_data:
            return run_data
        return DataConfig(name=calibration_data)
    return calibration_data


def _calibration(ckpt: Any, contract: InputContract | None, calibration_data: Any,
                 data_dir: str | None, num_images: int, seed: int,
                 shape: Sequence[int] | None) -> tuple[list[np.ndarray], str]:
    """Calibration batches prepared as ``contract`` says (:func:`calibration_batches`) and
    the data set's name; refused when they do not have the model's ``shape``."""
    data_cfg = _calibration_data(ckpt, calibration_data, contract)
    batches = calibration_batches(data_cfg, num_images, seed=seed, contract=contract,
                                  data_dir=data_dir)
    name = data_cfg.name if data_cfg is not None else contract.dataset  # type: ignore[union-attr]
    if shape is not None and tuple(batches[0].shape[1:]) != tuple(shape):
        raise DeployError(
            f"calibration images of {name} have shape {tuple(batches[0].shape[1:])}, "
            f"the model takes {tuple(shape)}"
        )
    return batches, name


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
    reduce_range: bool = False,
) -> Int8Export:
    """Fold, export to fp32 ONNX and quantise to INT8, calibrating on real training images.

    ``calibration_data`` names the data set (or is a :class:`~resdist.config.DataConfig`);
    None means the one the checkpoint's input contract names. The images are prepared as the
    contract says (:func:`resdist.data.eval_data.eval_data`), from the contract's folder unless
    ``data_dir`` names another; when the checkpoint records a run on that data set, its
    settings (``limit_train``, ``val_split``) are used too, so the calibration images are
    training images of that run. The INT8 file records the
    checkpoint's input contract (``input_contract``) and the data set (``resdist.data``), like
    an fp32 export.

    Returns:
        An :class:`Int8Export`: the quantiser's report, the model, its input shape and the
        fp32 top-1 agreement of the INT8 model on the calibration images.
    """
    check_export_target(out, FORMATS["onnx"])  # before anything is built or written
    ckpt = None
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from ...engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint_or_model)
    model, shape, name, contract = load_model_source(
        ckpt if ckpt is not None else checkpoint_or_model, input_shape, with_contract=True)
    check_export_contract(contract)
    batches, data_name = _calibration(ckpt, contract, calibration_data, data_dir,
                                      calibration_images, seed, shape)
    if shape is None:
        shape = tuple(batches[0].shape[1:])
    metadata = {DATA_METADATA_KEY: data_name}
    if contract is not None:
        metadata[CONTRACT_KEY] = contract.to_json()
    with tempfile.TemporaryDirectory(prefix="resdist-export-") as tmp:
        fp32 = export_onnx(to_deploy(model), Path(tmp) / "fp32.onnx", shape, opset=opset,
                           deploy=False)
        report = quantize_onnx(
            fp32, out, batches, per_channel=per_channel, metadata=metadata,
            reduce_range=reduce_range,
            calibration_source=f"{data_name} training split, no augmentation, prepared as the "
                               f"input contract says, seed {seed}",
        )
        agreement = _agreement(fp32, Path(out), batches)
    note = saturation_note(agreement, reduce_range)
    return Int8Export(quantization=replace(report, fp32_path=None), model=name,
                      input_shape=list(shape), opset=opset, calibration_agreement=agreement,
                      input_contract=contract, notes=[note] if note else [])


def export_int8(
    checkpoint_or_model: Any,
    fmt: str,
    out: str | os.PathLike,
    calibration_data: Any = None,
    *,
    data_dir: str | None = None,
    calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
    input_shape: Sequence[int] | None = None,
    check_images: int = 256,
    seed: int = 0,
) -> ExportReport:
    """INT8 export through a runtime's own quantiser (``fmt``: ``openvino``, ``executorch``,
    ``tflite``), calibrated on training images prepared as the input contract says, as
    :func:`quantize_checkpoint` is; the report's ``extra["int8_agreement"]`` is the fraction
    of the first ``check_images`` calibration images whose INT8 top-1 class is the fp32
    PyTorch model's.
    """
    from ..exporter import export

    ckpt = None
    if isinstance(checkpoint_or_model, (str, os.PathLike)):
        from ...engine.checkpoint import load_checkpoint

        ckpt = load_checkpoint(checkpoint_or_model)
    source = ckpt if ckpt is not None else checkpoint_or_model
    _, shape, _, contract = load_model_source(source, input_shape, with_contract=True)
    batches, data_name = _calibration(ckpt, contract, calibration_data, data_dir,
                                      calibration_images, seed, shape)
    images = np.concatenate(batches)[:check_images]
    return export(source, fmt, out, input_shape=shape or tuple(batches[0].shape[1:]),
                  quantize="int8", calibration=lambda: iter(batches), check_images=images,
                  data_name=data_name)
