"""ONNX Runtime CPU latency of several models, measured side by side."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ...machine import available_cores
from ..errors import require

Setting = tuple[int, int]
"""``(threads, batch)``: one latency setting."""


@dataclass
class LatencyRecord:
    """Latency of one model at one thread count and batch size (milliseconds per batch)."""

    model: str
    threads: int
    batch: int
    median_ms: float
    p10_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    per_image_ms: float
    runs: int

    @property
    def setting(self) -> Setting:
        """``(threads, batch)``."""
        return self.threads, self.batch

    def as_dict(self) -> dict[str, Any]:
        """The record without its model name (as stored under that model's entry)."""
        d = asdict(self)
        del d["model"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], model: str) -> LatencyRecord:
        """The record back from :meth:`as_dict`, with its model's name."""
        return cls(model=model, **d)


@dataclass
class LatencyRatio:
    """Ratio of two median latencies at one setting (None where either median is 0)."""

    threads: int
    batch: int
    ratio: float | None

    @property
    def setting(self) -> Setting:
        """``(threads, batch)``."""
        return self.threads, self.batch


def latency_ratios(
    numerator: Iterable[LatencyRecord], denominator: Iterable[LatencyRecord]
) -> list[LatencyRatio]:
    """Median of ``numerator`` / median of ``denominator`` at every setting both measured, in
    the denominator's order."""
    top = {r.setting: r.median_ms for r in numerator}
    return [LatencyRatio(r.threads, r.batch, ratio(top[r.setting], r.median_ms))
            for r in denominator if r.setting in top]


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``, or None where either is 0 or None."""
    return None if not a or not b else a / b


def _session(path: Any, threads: int, spin: bool) -> Any:
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])


def _summary(model: str, threads: int, batch: int, times_s: list[float]) -> LatencyRecord:
    ms = np.asarray(times_s) * 1e3
    med = float(np.median(ms))
    return LatencyRecord(
        model=model, threads=threads, batch=batch, median_ms=med,
        p10_ms=float(np.percentile(ms, 10)), p90_ms=float(np.percentile(ms, 90)),
        mean_ms=float(ms.mean()), min_ms=float(ms.min()), per_image_ms=med / batch, runs=len(ms),
    )


def measure_latency(
    onnx_paths: Mapping[str, Any],
    input_shapes: Mapping[str, Sequence[int]] | Sequence[int],
    batch_sizes: Sequence[int] = (1, 8, 32),
    threads: Sequence[int | None] = (1, None),
    runs: int | Mapping[int, int] = 20,
    warmup: int = 2,
    min_runs: int = 3,
    max_seconds: float | None = None,
    spin: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[LatencyRecord]:
    """ONNX Runtime CPU latency of several models, measured side by side.

    For each thread count (``None``: all cores) one session per model is created
    (``ORT_SEQUENTIAL``, all graph optimisations, denormals as zero, ``intra_op_num_threads``
    as given); for each batch size every model is warmed up, then the models are run in turn,
    one run each per round (order reversed every other round), so that a change in machine
    load hits all of them alike. Rounds stop after ``runs`` (per batch size if a mapping), or after ``max_seconds`` once every model
    has ``min_runs``. ``spin=False`` disables ORT's thread spinning so idle sessions do not
    steal cores from the one being timed. Returns one :class:`LatencyRecord` per (model,
    threads, batch): median, p10, p90, mean, min (milliseconds per batch), number of runs.
    """
    if isinstance(input_shapes, Mapping):
        shapes = {k: tuple(v) for k, v in input_shapes.items()}
    else:
        shapes = {k: tuple(input_shapes) for k in onnx_paths}
    cores = available_cores()
    rng = np.random.default_rng(seed)
    records: list[LatencyRecord] = []
    for t in threads:
        n_threads = cores if t is None or t <= 0 else int(t)
        sessions = {name: _session(p, n_threads, spin) for name, p in onnx_paths.items()}
        for b in batch_sizes:
            n_runs = runs.get(b, min_runs) if isinstance(runs, Mapping) else runs
            feeds = {
                name: {sess.get_inputs()[0].name:
                       rng.standard_normal((b, *shapes[name])).astype(np.float32)}
                for name, sess in sessions.items()
            }
            for name, sess in sessions.items():
                for _ in range(warmup):
                    sess.run(None, feeds[name])
            times: dict[str, list[float]] = {name: [] for name in sessions}
            start = time.perf_counter()
            order = list(sessions.items())
            for r in range(max(n_runs, 1)):
                for name, sess in order if r % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    sess.run(None, feeds[name])
                    times[name].append(time.perf_counter() - t0)
                if (
                    max_seconds is not None and r + 1 >= min_runs
                    and time.perf_counter() - start > max_seconds
                ):
                    break
            records += [_summary(name, n_threads, b, times[name]) for name in sessions]
            if log:
                log(f"  latency threads={n_threads} batch={b}: {len(times[next(iter(times))])} "
                    f"rounds in {time.perf_counter() - start:.1f} s")
        del sessions
    return records
