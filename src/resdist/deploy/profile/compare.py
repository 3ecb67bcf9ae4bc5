"""ResNets and their plain counterparts side by side: one typed record per model, one per pair.

:func:`profile_models` resolves each model (registry name, checkpoint, module), folds and exports
it, runs the liveness pass (:mod:`.liveness`), the PyTorch cross-check (:mod:`.memory`) and ONNX
Runtime latency (:mod:`.latency`), and pairs every plain network with its ResNet.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ...engine.denormals import flush_denormal
from ...machine import (
    available_cores,
    available_memory,
    environment,
    format_bytes,
    load_average,
)
from ...models import UnknownModelError, create_model, is_model, list_models, teacher_name_for
from ...models.fold import calibrate_bn, to_deploy
from ...models.pretrained import load_torchvision_weights
from .._onnx_graph import load_onnx
from ..errors import DeployError, require
from ..exporter import load_model_source
from ..formats.onnx import DEFAULT_OPSET, count_feature_adds, export_onnx
from .int8 import add_int8_latency
from .latency import latency_ratios, ratio
from .liveness import analyze_onnx
from .memory import largest_activation_bytes, memory_cross_check
from .records import (
    BatchMemory,
    FusedAddFigures,
    ModelProfile,
    PairComparison,
    ProfileResult,
    ProfileSettings,
    as_profile,
)
from .runtimes import RuntimeProfile, check_runtimes, profile_runtimes


@dataclass
class _Source:
    """A model to profile, resolved from what the caller gave."""

    name: str
    arch: str
    model: nn.Module
    source: str  # "module", "registry", "checkpoint" or "weights" (a state-dict file)
    input_shape: Sequence[int] | None
    checkpoint: str | None = None


def _is_checkpoint_path(spec: Any) -> bool:
    if isinstance(spec, os.PathLike):
        return True
    return isinstance(spec, str) and (
        os.path.exists(spec) or spec.endswith((".pth", ".pt", ".ckpt")) or os.sep in spec
    )


def _file_name(path: str | os.PathLike) -> str:
    """A file's name as text for labels and plots: bytes that are not UTF-8 (or that Python,
    under ``LANG=C``, could not decode) become U+FFFD instead of breaking the plot's font."""
    return os.fsencode(Path(path).name).decode("utf-8", errors="replace")


def _resolve_model(
    spec: Any, index: int, input_shape: Sequence[int] | None, model_kwargs: Mapping[str, Any]
) -> _Source:
    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], nn.Module):
        label, model = spec
        return _Source(str(label), str(label), model, "module", input_shape)
    if isinstance(spec, nn.Module):
        name = f"{type(spec).__name__}#{index}"
        return _Source(name, name, spec, "module", input_shape)
    if isinstance(spec, str) and is_model(spec):
        return _Source(spec, spec, create_model(spec, **dict(model_kwargs)), "registry",
                       input_shape)
    name, eq, weights = spec.partition("=") if isinstance(spec, str) else ("", "", "")
    if eq and is_model(name):
        model = create_model(name, **dict(model_kwargs))
        load_torchvision_weights(model, name, weights)
        return _Source(f"{name} ({_file_name(weights)})", name, model, "weights", input_shape,
                       checkpoint=weights)
    if _is_checkpoint_path(spec):
        model, shape, arch = load_model_source(spec)
        return _Source(f"{arch} ({_file_name(spec)})", arch, model, "checkpoint",
                       shape or input_shape, checkpoint=str(spec))
    raise UnknownModelError(
        f"{spec!r} is neither a registered model, NAME=WEIGHTS (a registered model with a "
        f"state-dict file's weights) nor a checkpoint file. "
        f"Valid names: {', '.join(list_models())}"
    )


def _pair_models(models: Sequence[tuple[str, bool]]) -> list[tuple[int, int]]:
    """(plain index, resnet index) for ``(arch, is_resnet)`` entries: plainN with resnetN by
    name, else the last ResNet given before it (or after it, if none came before)."""
    pairs = []
    for i, (arch, is_resnet) in enumerate(models):
        if is_resnet:
            continue
        want = teacher_name_for(arch)
        match = [j for j, (a, r) in enumerate(models) if r and a == want]
        if not match:
            before = [j for j, (_, r) in enumerate(models[:i]) if r]
            match = before or [j for j, (_, r) in enumerate(models) if r]
        if match:
            pairs.append((i, match[-1]))
    return pairs


def _compare(plain: ModelProfile, res: ModelProfile) -> PairComparison:
    return PairComparison(
        plain=plain.name,
        resnet=res.name,
        peak_ratio=ratio(res.peak_activation_bytes_per_image,
                         plain.peak_activation_bytes_per_image),
        bytes_moved_ratio=ratio(res.bytes_moved_per_image, plain.bytes_moved_per_image),
        macs_ratio=ratio(res.macs_per_image, plain.macs_per_image),
        peak_ratio_fused_add=ratio(res.fused_add.peak_activation_bytes_per_image,
                                   plain.fused_add.peak_activation_bytes_per_image),
        bytes_moved_ratio_fused_add=ratio(res.fused_add.bytes_moved_per_image,
                                          plain.fused_add.bytes_moved_per_image),
        latency_ratio=latency_ratios(res.latency, plain.latency),
    )


def _check_activation_memory(name: str, model: nn.Module, shape: Sequence[int], batch: int
                             ) -> None:
    """Refuse, before anything is allocated, a model whose largest activation (input and output
    of one layer) at batch ``batch`` exceeds the free memory (e.g. ``--input-size 60000``)."""
    need, free = 2 * batch * largest_activation_bytes(model, shape), available_memory()
    if free is not None and need > free:
        raise DeployError(
            f"{name} at input {'x'.join(map(str, shape))} needs at least {format_bytes(need)} "
            f"for one layer's activations at batch {batch}, more than the "
            f"{format_bytes(free)} of memory free on this machine; use a smaller input size "
            "(--input-size) or smaller batches (--batch-sizes)")


def _profile_one(
    src: _Source, index: int, s: ProfileSettings, onnx_dir: Path
) -> tuple[ModelProfile, Path, tuple[int, ...], nn.Module]:
    """Calibrate (if asked), fold, export and analyse one model; latency comes later."""
    shape = tuple(int(d) for d in src.input_shape)
    model = src.model
    calibrate = src.source == "registry" if s.calibrate is None else s.calibrate
    _check_activation_memory(src.name, model, shape, max(
        1, s.calibration_batch_size if calibrate else 1, *(s.batch_sizes if s.latency else ())))
    if calibrate and src.source == "module":
        model = copy.deepcopy(model)  # leave the caller's BatchNorm statistics alone
    if calibrate:
        calibrate_bn(model, s.calibration_batches, shape, s.calibration_batch_size, seed=s.seed)
        weights = (f"random init, BN statistics calibrated on {s.calibration_batches}x"
                   f"{s.calibration_batch_size} Gaussian images")
    else:
        weights = {"module": "as given", "weights": f"state dict {src.checkpoint}"}.get(
            src.source, "trained (checkpoint)")
    deployed = to_deploy(model)
    path = export_onnx(deployed, onnx_dir / f"{index:02d}.onnx", shape, opset=s.opset,
                       deploy=False)
    proto = load_onnx(path)
    mem = [analyze_onnx(proto, b) for b in sorted({1, *s.batch_sizes})]
    one = mem[0]
    fused = analyze_onnx(proto, 1, fuse_add=True)
    feature_adds = count_feature_adds(proto)
    record = ModelProfile(
        name=src.name,
        arch=src.arch,
        source=src.source,
        weights=weights,
        input_shape=list(shape),
        onnx_file=path.name,
        is_resnet=(bool(model.shortcuts) if hasattr(model, "shortcuts") else feature_adds > 0),
        parameters=sum(p.numel() for p in deployed.parameters()),
        macs_per_image=one.macs,
        feature_adds=feature_adds,
        expected_shortcut_adds=(
            model.count_shortcut_adds() if hasattr(model, "count_shortcut_adds") else None
        ),
        peak_activation_bytes_per_image=one.peak_activation_bytes,
        bytes_moved_per_image=one.bytes_moved,
        bytes_read_per_image=one.bytes_read,
        bytes_written_per_image=one.bytes_written,
        peak_step=one.peak_step,
        fused_add=FusedAddFigures(fused.peak_activation_bytes, fused.bytes_moved),
        memory=[BatchMemory(g.batch_size, g.peak_activation_bytes, g.bytes_moved) for g in mem],
        checkpoint=src.checkpoint,
    )
    if s.memory_check:
        record.memory_check = memory_cross_check(deployed, shape, proto, 1, deploy=False)
    return record, path, shape, deployed


def _meta(s: ProfileSettings) -> dict[str, Any]:
    meta = environment()
    meta.update({
        "batch_sizes": list(s.batch_sizes),
        "threads": [available_cores() if t is None or t <= 0 else int(t) for t in s.threads],
        "runs": dict(s.runs) if isinstance(s.runs, Mapping) else s.runs,
        "warmup": s.warmup, "min_runs": s.min_runs, "max_seconds": s.max_seconds,
        "model_kwargs": s.model_kwargs, "opset": s.opset,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "denormals": "flushed (torch.set_flush_denormal, ORT session.set_denormal_as_zero)",
        "ort_session": "CPUExecutionProvider, ORT_SEQUENTIAL, ORT_ENABLE_ALL, "
                       "intra_op_num_threads as listed, spinning off",
        "memory_convention": "liveness over the exported ONNX graph, sequential topological "
                             "order, Conv+activation fused, elementwise ops in place, fp32",
        "ratios": "ResNet / plain (above 1: the plain network is cheaper)",
    })
    return meta


def _profile(
    models: Sequence[Any], s: ProfileSettings, onnx_dir: Path, log: Callable[[str], None],
    deployed: dict[str, nn.Module] | None = None,
) -> ProfileResult:
    meta = _meta(s)
    records: list[ModelProfile] = []
    paths: dict[str, Path] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    deployed = {} if deployed is None else deployed
    for idx, spec in enumerate(models):
        src = _resolve_model(spec, idx, s.input_shape, s.model_kwargs)
        if src.name in paths:
            src.name = f"{src.name}#{idx}"
        t0 = time.perf_counter()
        record, paths[src.name], shapes[src.name], deployed[src.name] = _profile_one(
            src, idx, s, onnx_dir)
        records.append(record)
        log(f"{src.name}: exported and analysed in {time.perf_counter() - t0:.1f} s "
            f"(peak {record.peak_activation_bytes_per_image / 2**10:.0f} KiB/image, "
            f"{record.feature_adds} feature Adds)")
    if s.latency:
        by_name = {r.name: r for r in records}
        for lat in s.time(paths, shapes, log):
            by_name[lat.model].latency.append(lat)
    if load := load_average():
        meta["loadavg_end"] = load
    pairs = _pair_models([(r.arch, r.is_resnet) for r in records])
    return ProfileResult(meta, records, [_compare(records[i], records[j]) for i, j in pairs], s)


def profile_models(
    models: Sequence[Any],
    input_shape: Sequence[int] = (3, 32, 32),
    batch_sizes: Sequence[int] = (1, 8, 32),
    threads: Sequence[int | None] = (1, None),
    runs: int | Mapping[int, int] = 20,
    warmup: int = 2,
    min_runs: int = 3,
    max_seconds: float | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    calibrate: bool | None = None,
    calibration_batches: int = 2,
    calibration_batch_size: int = 16,
    memory_check: bool = True,
    latency: bool = True,
    int8: bool = False,
    onnx_dir: str | os.PathLike | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    runtimes: Sequence[str] = (),
    calibration_data: Any = None,
    data_dir: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> ProfileResult:
    """Profile several models side by side: memory, bytes moved, MACs, ORT latency, ratios.

    Args:
        models: registry names (``"resnet56"``, built with ``model_kwargs``), checkpoint paths
            (their stored ``input_shape`` wins), modules, or ``(label, module)`` pairs.
        input_shape: ``(C, H, W)`` of one image.
        batch_sizes, threads, runs, warmup, min_runs, max_seconds: see :func:`measure_latency`.
        calibrate: re-estimate BatchNorm statistics from Gaussian inputs before folding
            (:func:`calibrate_bn`); ``None`` does it for registry models (random weights) only.
        memory_check: add :func:`memory_cross_check` at batch 1 for each model.
        latency: ``False`` skips timing (memory/MAC figures only).
        int8: also quantise every model to INT8 and time fp32 and INT8 side by side in one
            interleaved run (:func:`~resdist.deploy.profile.add_int8_latency`); needs
            ``latency``.
        onnx_dir: keep the exported graphs there (default: a temporary folder).
        opset: the ONNX opset of those graphs (18 and above: the torch.export-based exporter;
            lower: the TorchScript-based one, quicker on deep networks).
        log: called with progress lines.
        runtimes: also time every model on these runtimes
            (:data:`~resdist.deploy.profile.runtimes.RUNTIMES`, or ``all``), fp32 and, with
            ``int8``, INT8 through each runtime's own quantiser, with their planned memory
            (:func:`~resdist.deploy.profile.runtimes.profile_runtimes`); the result's
            ``runtimes``.
        calibration_data, data_dir: with ``int8``, the data set (name or DataConfig) and
            folder whose training images calibrate models without an input contract
            (``NAME=FILE`` state dicts, registry models); checkpoints use their contract's.

    Denormals are flushed while this runs (:func:`resdist.engine.denormals.flush_denormal`,
    which then restores the mode set before; ORT sessions set ``session.set_denormal_as_zero``).
    Registry models are built here; given modules are not modified.

    Returns:
        A :class:`ProfileResult`: ``meta``, a :class:`ModelProfile` per model and a
        :class:`PairComparison` per pair; every ratio is ResNet / plain, so a value above 1 is
        what the plain network saves. ``to_dict()`` is its JSON form.
    """
    if not models:
        raise DeployError("profile_models needs at least one model")
    if int8 and not latency:
        raise DeployError("INT8 profiling times the quantised models; it needs latency=True "
                          "(drop --no-latency)")
    require("onnx")
    if latency:
        require("onnxruntime")
    if runtimes:
        runtimes = check_runtimes(runtimes)  # a missing runtime is said before any work
    settings = ProfileSettings(
        input_shape=tuple(input_shape), batch_sizes=batch_sizes, threads=threads, runs=runs,
        warmup=warmup, min_runs=min_runs, max_seconds=max_seconds,
        model_kwargs=dict(model_kwargs or {}), calibrate=calibrate,
        calibration_batches=calibration_batches, calibration_batch_size=calibration_batch_size,
        memory_check=memory_check, latency=latency and not int8, seed=seed, opset=opset,
    )
    with flush_denormal(True), contextlib.ExitStack() as stack:
        if onnx_dir is None:
            onnx_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="resdist-profile-"))
        onnx_dir = Path(onnx_dir)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        deployed: dict[str, nn.Module] = {}
        result = _profile(models, settings, onnx_dir, log or (lambda _msg: None), deployed)
        if int8:  # fp32 and INT8 are timed together there, interleaved
            add_int8_latency(result, onnx_dir, log=log, calibration_data=calibration_data,
                             data_dir=data_dir)
        if runtimes:
            result.runtimes = _runtimes(result, deployed, runtimes, settings, int8, onnx_dir,
                                        log, (calibration_data, data_dir))
        return result


def _runtimes(result: ProfileResult, deployed: Mapping[str, nn.Module], runtimes: Sequence[str],
              s: ProfileSettings, int8: bool, folder: Path,
              log: Callable[[str], None] | None,
              data: tuple[Any, str | None] = (None, None)) -> RuntimeProfile:
    """Every model of ``result`` on ``runtimes`` (calibrated as the INT8 ONNX path is, on
    ``data = (calibration data, folder)`` for models without a contract)."""
    from ..quantize.calibration import calibration_for

    models = {m.name: (deployed[m.name], tuple(m.input_shape)) for m in result.models}
    calibration = None
    if int8:
        calibration = {}
        for m in result.models:
            batches, _ = calibration_for(m.checkpoint, m.input_shape, 64, seed=s.seed,
                                         random_weights=m.source == "registry",
                                         data=data[0], data_dir=data[1])
            calibration[m.name] = lambda b=batches: iter(b)
    runs = s.runs if isinstance(s.runs, int) else max(s.runs.values())
    return profile_runtimes(models, runtimes, folder / "runtimes", int8=int8,
                            calibration=calibration, threads=s.threads,
                            batch_sizes=s.batch_sizes, runs=runs, warmup=s.warmup, seed=s.seed,
                            log=log, opset=s.opset)


def merge_profiles(results: Sequence[ProfileResult | Mapping[str, Any]]) -> ProfileResult:
    """One result from several :func:`profile_models` runs (e.g. CIFAR and ImageNet shapes),
    given as results or their JSON form.

    ``meta`` is taken from the first run, with each run's ``date`` and load averages kept under
    ``runs_meta``."""
    if not results:
        raise DeployError("merge_profiles needs at least one result")
    profiles = [as_profile(r) for r in results]
    meta = dict(profiles[0].meta)
    meta["runs_meta"] = [
        {k: p.meta.get(k) for k in ("date", "loadavg_start", "loadavg_end")} for p in profiles
    ]
    timed = [p.runtimes for p in profiles if p.runtimes is not None]
    runtimes = RuntimeProfile([r for t in timed for r in t.latency],
                              [m for t in timed for m in t.memory]) if timed else None
    return ProfileResult(meta, [m for p in profiles for m in p.models],
                         [c for p in profiles for c in p.pairs], runtimes=runtimes)
