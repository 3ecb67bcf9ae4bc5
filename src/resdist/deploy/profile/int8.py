"""INT8 latency beside fp32 (``resdist profile --int8``): quantise every profiled model, time
fp32 and INT8 in one interleaved run, and report the speed-ups and ResNet / plain ratios."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...tables import markdown_table
from ..errors import DeployError
from ..quantize import calibration_for, quantize_onnx
from .latency import latency_ratios
from .records import Int8Profile, ModelProfile, ProfileResult

INT8_SUFFIX = " [int8]"
"""Appended to a model's name for its INT8 session in the interleaved timing."""


def _quantize(
    model: ModelProfile, onnx_dir: Path, calibration_images: int, seed: int,
    data: Any = None, data_dir: str | None = None,
) -> tuple[Int8Profile, Path]:
    """Quantise a profiled model's fp32 graph beside it; its profile and the INT8 file."""
    if model.onnx_file is None:
        raise DeployError(f"{model.name}: the profile records no exported graph to quantise")
    fp32 = onnx_dir / model.onnx_file
    int8 = fp32.with_name(f"{fp32.stem}-int8.onnx")
    batches, described = calibration_for(model.checkpoint, model.input_shape,
                                         calibration_images, seed,
                                         random_weights=model.source == "registry",
                                         data=data, data_dir=data_dir)
    report = quantize_onnx(fp32, int8, batches, calibration_source=described)
    return Int8Profile(replace(report, path=None, fp32_path=None)), int8


def add_int8_latency(
    result: ProfileResult,
    onnx_dir: str | os.PathLike,
    *,
    calibration_images: int = 64,
    log: Callable[[str], None] | None = None,
    calibration_data: Any = None,
    data_dir: str | None = None,
) -> ProfileResult:
    """Quantise every model of a :func:`~resdist.deploy.profile_models` result (run with
    ``onnx_dir`` and ``latency=False``) and time fp32 and INT8 side by side.

    Checkpoints calibrate on the training images of their input contract's data set (their
    run's settings where recorded), models without a contract (``NAME=FILE`` state dicts,
    registry models) on ``calibration_data`` (a name or DataConfig, in ``data_dir``) when
    given, else on Gaussian images (:func:`~resdist.deploy.quantize.calibration_for`). All
    fp32 and INT8 sessions are timed in one interleaved run (:func:`~resdist.deploy.measure_latency`) at the profile's settings
    (batch sizes, threads, runs, seed). Fills each model's ``latency`` (fp32) and ``int8``
    (:class:`Int8Profile`) and each pair's ``latency_ratio`` and ``latency_ratio_int8``
    (ResNet / plain); records how in ``meta["int8"]``.

    Returns:
        ``result``, filled in.
    """
    settings = result.settings
    if settings is None:
        raise DeployError("INT8 latency needs a profile measured in this process, with its "
                          "exported graphs (profile_models(..., onnx_dir=DIR))")
    onnx_dir = Path(onnx_dir)
    paths: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for model in result.models:
        model.int8, int8 = _quantize(model, onnx_dir, calibration_images, settings.seed,
                                     calibration_data, data_dir)
        paths[model.name], paths[model.name + INT8_SUFFIX] = onnx_dir / model.onnx_file, int8
        shapes[model.name] = shapes[model.name + INT8_SUFFIX] = tuple(model.input_shape)
        if log:
            log(f"{model.name}: quantised to INT8 ({model.int8.quantization.calibration}), "
                f"{model.int8.quantization.feature_adds} feature Adds")
    for record in settings.time(paths, shapes, log):
        if record.model.endswith(INT8_SUFFIX):
            result.model(record.model[: -len(INT8_SUFFIX)]).int8.latency.append(record)
        else:
            result.model(record.model).latency.append(record)
    for model in result.models:
        model.int8.speedup = latency_ratios(model.latency, model.int8.latency)
    for pair in result.pairs:
        plain, res = result.model(pair.plain), result.model(pair.resnet)
        pair.latency_ratio = latency_ratios(res.latency, plain.latency)
        pair.latency_ratio_int8 = latency_ratios(res.int8.latency, plain.int8.latency)
    result.meta["int8"] = (
        "onnxruntime.quantization static QDQ, per-channel QInt8 weights, QUInt8 activations "
        f"(MinMax), calibration on {calibration_images} images per model (see each model); "
        "fp32 and INT8 sessions timed interleaved in one run"
    )
    return result


def format_int8_table(result: ProfileResult) -> str:
    """Markdown tables: fp32 vs INT8 median latency per model and setting (with the INT8
    speed-up), then ResNet / plain latency ratios in fp32 and in INT8."""
    settings = sorted({r.setting for m in result.models if m.int8 for r in m.int8.latency})
    head = [f"t={t} b={b}" for t, b in settings]
    rows = []
    for m in result.models:
        fp32 = {r.setting: r.median_ms for r in m.latency}
        int8 = {r.setting: r.median_ms for r in m.int8.latency} if m.int8 else {}
        rows.append([m.name, m.int8.quantization.feature_adds if m.int8 else "-", *(
            f"{fp32[k]:.2f} / {int8[k]:.2f} ({fp32[k] / int8[k]:.2f}x)"
            if k in fp32 and k in int8 else "-" for k in settings)])
    parts = [markdown_table(
        ["model", "INT8 feature Adds", *(f"ms fp32 / INT8 (speed-up), {h}" for h in head)], rows)]
    if result.pairs:
        pair_rows = []
        for p in result.pairs:
            a = {r.setting: r.ratio for r in p.latency_ratio}
            b = {r.setting: r.ratio for r in p.latency_ratio_int8 or []}
            pair_rows.append([f"{p.resnet} / {p.plain}", *(
                f"{a[k]:.2f} / {b[k]:.2f}" if a.get(k) and b.get(k) else "-" for k in settings)])
        parts.append(markdown_table(
            ["ResNet / plain latency", *(f"fp32 / INT8, {h}" for h in head)], pair_rows))
    return "\n\n".join(parts)
