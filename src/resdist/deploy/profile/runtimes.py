"""The ResNet and its plain student on the runtimes engineers ship with, side by side.

For each runtime (ONNX Runtime, OpenVINO, ExecuTorch with XNNPACK, LiteRT) and precision
(fp32, and INT8 through the runtime's own quantiser) every model is exported in that runtime's
format, warmed up, then timed in interleaved rounds (one run of each model per round, the order
reversed every other round) at each thread count and batch size; medians are reported. Where a
runtime plans activation memory itself, its figure is recorded: ExecuTorch's memory-planned
buffers (with the XNNPACK delegate the plan holds only the delegate's inputs and outputs; the
portable-kernel program's plan shows every activation), LiteRT's tensor arena where the
interpreter reports one, and for INT8 ``.tflite`` files the smallest arena TFLite Micro runs
them in, when ``tflite-micro`` is installed (``resdist[tflm]``).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ...machine import available_cores
from ..errors import DeployError
from ..formats import ExportJob, get_format
from ..formats.common import Runner
from ..formats.onnx import DEFAULT_OPSET
from .latency import ratio

__all__ = ["RUNTIMES", "RuntimeLatency", "RuntimeMemory", "RuntimeProfile", "check_runtimes",
           "format_runtime_table", "profile_runtimes"]

RUNTIMES = {"onnxruntime": "onnx", "openvino": "openvino", "executorch": "executorch",
            "litert": "tflite"}
"""``--runtime`` name -> the export format it runs."""


@dataclass
class RuntimeLatency:
    """Median latency of one model on one runtime at one precision, thread count and batch."""

    runtime: str
    model: str
    precision: str
    threads: int
    batch: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    runs: int


@dataclass
class RuntimeMemory:
    """Activation memory as a runtime plans it for one model (batch 1), and what it covers."""

    runtime: str
    model: str
    precision: str
    planned_bytes: int
    covers: str


@dataclass
class RuntimeProfile:
    """Latency and planned memory of every model on every runtime asked for."""

    latency: list[RuntimeLatency]
    memory: list[RuntimeMemory]

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``runtimes`` in ``profile.json``)."""
        return {"latency": [asdict(r) for r in self.latency],
                "memory": [asdict(m) for m in self.memory]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RuntimeProfile:
        """The record back from :meth:`to_dict`."""
        return cls([RuntimeLatency(**r) for r in d.get("latency", [])],
                   [RuntimeMemory(**m) for m in d.get("memory", [])])


def check_runtimes(runtimes: Sequence[str]) -> list[str]:
    """``runtimes`` with ``all`` expanded, checked against :data:`RUNTIMES`, and each one's
    package importable (one line naming the extra otherwise), before any work starts."""
    names = list(RUNTIMES) if "all" in runtimes else list(dict.fromkeys(runtimes))
    for name in names:
        if name not in RUNTIMES:
            raise DeployError(f"unknown runtime {name!r}: choose from {', '.join(RUNTIMES)} "
                              "or all")
    from ..errors import require

    packages = {"onnxruntime": ["onnxruntime", "onnx"], "openvino": ["openvino", "nncf"],
                "executorch": ["executorch", "torchao"], "litert": ["ai_edge_litert",
                                                                    "litert_torch"]}
    for name in names:
        for package in packages[name]:
            require(package)
    return names


def _export(runtime: str, model: nn.Module, shape: tuple[int, int, int], precision: str,
            batch: int, out: Path, calibration: Callable[[], Any] | None,
            delegate: bool = True, opset: int = DEFAULT_OPSET) -> tuple[Path, dict[str, Any]]:
    fmt = get_format(RUNTIMES[runtime])
    suffix = fmt.suffixes[0]
    path = out / f"{out.name}-{runtime}-{precision}-b{batch}{'' if delegate else '-portable'}"
    job = ExportJob(model, model, path.with_suffix(suffix), shape, None, verify=False,
                    opset=opset, int8=precision == "int8", calibration=calibration, batch=batch,
                    delegate=delegate)
    written = fmt.write(job)
    return written.path, written.extra


def _onnx_int8(model: nn.Module, shape: tuple[int, int, int], out: Path,
               calibration: Callable[[], Any], opset: int = DEFAULT_OPSET) -> Path:
    from ..formats.onnx import export_onnx
    from ..quantize.static import quantize_onnx

    fp32 = export_onnx(model, out.with_name(out.name + "-fp32-for-int8.onnx"), shape,
                       opset=opset, deploy=False)
    quantize_onnx(fp32, out.with_name(out.name + "-onnxruntime-int8.onnx"),
                  list(calibration()), calibration_source="profile calibration images")
    return out.with_name(out.name + "-onnxruntime-int8.onnx")


def _time(runners: Mapping[str, Runner], batch: int, shape: Sequence[int], runs: int,
          warmup: int, seed: int) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, *shape)).astype(np.float32)
    for run in runners.values():
        for _ in range(warmup):
            run(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    order = list(runners.items())
    for r in range(max(runs, 1)):
        for name, run in order if r % 2 == 0 else order[::-1]:
            t0 = time.perf_counter()
            run(x)
            times[name].append(time.perf_counter() - t0)
    return times


def _record(runtime: str, name: str, precision: str, threads: int, batch: int,
            times: list[float]) -> RuntimeLatency:
    ms = np.asarray(times) * 1e3
    return RuntimeLatency(runtime, name, precision, threads, batch, float(np.median(ms)),
                          float(np.percentile(ms, 10)), float(np.percentile(ms, 90)), len(ms))


def _memory(runtime: str, name: str, precision: str, model: nn.Module,
            shape: tuple[int, int, int], folder: Path, calibration: Any,
            extra: Mapping[str, Any], path: Path) -> list[RuntimeMemory]:
    found = []
    if runtime == "executorch":
        found.append(RuntimeMemory(runtime, name, precision, int(extra["planned_memory_bytes"]),
                                   "memory plan of the XNNPACK program (the delegate's own "
                                   "workspace is not in it)"))
        if precision == "fp32":
            _, portable = _export(runtime, model, shape, precision, 1, folder, calibration,
                                  delegate=False)
            found.append(RuntimeMemory(runtime, name, precision,
                                       int(portable["planned_memory_bytes"]),
                                       "memory plan of the portable-kernel program: every "
                                       "activation"))
    elif runtime == "litert" and extra.get("arena_bytes"):
        found.append(RuntimeMemory(runtime, name, precision, int(extra["arena_bytes"]),
                                   "LiteRT tensor arena"))
    if runtime == "litert" and precision == "int8" and importlib.util.find_spec("tflite_micro"):
        from ..formats.tflm import tflm_arena

        found.append(RuntimeMemory(runtime, name, precision, tflm_arena(path).arena_bytes,
                                   "TFLite Micro: the smallest tensor arena it runs in "
                                   "(activations and interpreter state)"))
    return found


def profile_runtimes(
    models: Mapping[str, tuple[nn.Module, tuple[int, int, int]]],
    runtimes: Sequence[str],
    folder: str | Path,
    *,
    int8: bool = False,
    calibration: Mapping[str, Callable[[], Any]] | None = None,
    threads: Sequence[int | None] = (1, None),
    batch_sizes: Sequence[int] = (1, 8),
    runs: int = 20,
    warmup: int = 3,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    opset: int = DEFAULT_OPSET,
) -> RuntimeProfile:
    """Time the folded ``models`` (name -> (module, ``(C, H, W)``)) on every runtime.

    Args:
        models: the deployed (folded) networks to compare; the models of one call are timed
            together, interleaved.
        runtimes: names from :data:`RUNTIMES` (``all``: every one).
        folder: where the exported files go.
        int8: also export each model in INT8 through the runtime's own quantiser, calibrated
            with ``calibration[name]()`` (prepared ``(N, C, H, W)`` batches).
        threads: thread counts (None: every core); batch_sizes, runs, warmup: the timing.
        opset: the ONNX opset of the files made through ONNX (ONNX Runtime, OpenVINO).

    Returns:
        A :class:`RuntimeProfile`: one :class:`RuntimeLatency` per runtime, model, precision,
        thread count and batch; planned memory where the runtime exposes it.
    """
    names = check_runtimes(runtimes)
    if int8 and not calibration:
        raise DeployError("INT8 runtime profiling needs calibration images for every model")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    say = log or (lambda _msg: None)
    cores = available_cores()
    latency: list[RuntimeLatency] = []
    memory: list[RuntimeMemory] = []
    for runtime in names:
        fmt = get_format(RUNTIMES[runtime])
        for precision in ("fp32", "int8") if int8 else ("fp32",):
            files: dict[int, dict[str, Path]] = {}
            for b in batch_sizes if runtime == "executorch" else (1,):
                files[b] = {}
                for name, (model, shape) in models.items():
                    cal = calibration[name] if calibration else None
                    base = folder / name.replace("/", "_").replace(" ", "_")
                    t0 = time.perf_counter()
                    if runtime == "onnxruntime" and precision == "int8":
                        files[b][name], extra = _onnx_int8(model, shape, base, cal, opset), {}
                    else:
                        files[b][name], extra = _export(runtime, model, shape, precision, b,
                                                        base, cal, opset=opset)
                    if b == batch_sizes[0]:
                        memory += _memory(runtime, name, precision, model, shape, base, cal,
                                          extra, files[b][name])
                    say(f"{runtime} {precision} {name} batch {b}: exported in "
                        f"{time.perf_counter() - t0:.1f} s")
            for t in threads:
                n = cores if t is None or t <= 0 else int(t)
                for b in batch_sizes:
                    chosen = files.get(b, files[next(iter(files))])
                    runners = {name: fmt.load_runner(p, n) for name, p in chosen.items()}
                    shape = next(iter(models.values()))[1]
                    times = _time(runners, b, shape, runs, warmup, seed)
                    latency += [_record(runtime, name, precision, n, b, ts)
                                for name, ts in times.items()]
                    say(f"{runtime} {precision} threads={n} batch={b}: timed")
    return RuntimeProfile(latency, memory)


def format_runtime_table(profile: RuntimeProfile, pairs: Sequence[tuple[str, str]]) -> str:
    """One markdown table: runtime x pair x precision x setting, both medians and the
    ResNet/plain ratio (above 1: the plain network is faster), and the planned memory."""
    from ...tables import markdown_table

    med = {(r.runtime, r.model, r.precision, r.threads, r.batch): r.median_ms
           for r in profile.latency}
    mem = {(m.runtime, m.model, m.precision, m.covers): m.planned_bytes for m in profile.memory}
    rows = []
    for (runtime, model, precision, threads, batch), plain_ms in med.items():
        for plain, resnet in pairs:
            if model != plain or (runtime, resnet, precision, threads, batch) not in med:
                continue
            res_ms = med[(runtime, resnet, precision, threads, batch)]
            r = ratio(res_ms, plain_ms)
            rows.append([runtime, precision, f"{resnet} / {plain}", str(threads), str(batch),
                         f"{res_ms:.3f}", f"{plain_ms:.3f}", f"{r:.2f}x" if r else "-"])
    table = markdown_table(["runtime", "precision", "ResNet / plain", "threads", "batch",
                            "ResNet ms", "plain ms", "latency ratio"], rows)
    mem_rows = []
    for (runtime, model, precision, covers), plain_b in mem.items():
        for plain, resnet in pairs:
            res_b = mem.get((runtime, resnet, precision, covers))
            if model == plain and res_b is not None:
                r = ratio(res_b, plain_b)
                mem_rows.append([runtime, precision, f"{resnet} / {plain}", f"{res_b:,}",
                                 f"{plain_b:,}", f"{r:.2f}x" if r else "-", covers])
    if mem_rows:
        table += "\n\nActivation memory as the runtime plans it (batch 1, bytes):\n\n" + \
            markdown_table(["runtime", "precision", "ResNet / plain", "ResNet", "plain",
                            "ratio", "what the figure covers"], mem_rows)
    return table
