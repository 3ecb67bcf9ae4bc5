"""The typed records of a profile and their JSON form: how it measures
(:class:`ProfileSettings`), one :class:`ModelProfile` per model, one :class:`PairComparison` per
ResNet/plain pair, gathered in a :class:`ProfileResult`.

``to_dict`` writes the JSON form (``profile.json``) and ``from_dict`` reads it back, so a saved
profile renders again as it was; an optional part that was not measured (``memory_check``,
``int8``, ``latency_ratio_int8``) has no key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..formats.onnx import DEFAULT_OPSET
from ..quantize import QuantizeReport
from .latency import LatencyRatio, LatencyRecord, Setting, measure_latency


@dataclass
class ProfileSettings:
    """How :func:`profile_models` measures (its keyword arguments, see there)."""

    input_shape: tuple[int, ...] = (3, 32, 32)
    batch_sizes: Sequence[int] = (1, 8, 32)
    threads: Sequence[int | None] = (1, None)
    runs: int | Mapping[int, int] = 20
    warmup: int = 2
    min_runs: int = 3
    max_seconds: float | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    calibrate: bool | None = None
    calibration_batches: int = 2
    calibration_batch_size: int = 16
    memory_check: bool = True
    latency: bool = True
    seed: int = 0
    opset: int = DEFAULT_OPSET

    def time(self, onnx_paths: Mapping[str, Any], input_shapes: Mapping[str, Sequence[int]],
             log: Callable[[str], None] | None = None) -> list[LatencyRecord]:
        """:func:`~.latency.measure_latency` of the given models at these settings."""
        return measure_latency(onnx_paths, input_shapes, self.batch_sizes, self.threads,
                               self.runs, self.warmup, self.min_runs, self.max_seconds,
                               seed=self.seed, log=log)


@dataclass
class FusedAddFigures:
    """Memory figures of an executor that fuses the shortcut Add into the convolution."""

    peak_activation_bytes_per_image: int
    bytes_moved_per_image: int


@dataclass
class BatchMemory:
    """Liveness figures of one model at one batch size."""

    batch: int
    peak_activation_bytes: int
    bytes_moved: int


@dataclass
class Int8Profile:
    """A profiled model quantised to INT8: the quantiser's report (without file paths), its
    latency and the speed-up over fp32 (fp32 / INT8 median per setting)."""

    quantization: QuantizeReport
    latency: list[LatencyRecord] = field(default_factory=list)
    speedup: list[LatencyRatio] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the report's figures, ``latency`` and ``speedup``."""
        d = self.quantization.as_dict()
        del d["path"], d["fp32_path"]
        d["latency"] = [r.as_dict() for r in self.latency]
        d["speedup"] = [asdict(r) for r in self.speedup]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], model: str) -> Int8Profile:
        """The record back from :meth:`to_dict` (``model`` names the latency records)."""
        report = {k: v for k, v in d.items() if k not in ("latency", "speedup")}
        return cls(QuantizeReport.from_dict(report),
                   [LatencyRecord.from_dict(r, model) for r in d["latency"]],
                   [LatencyRatio(**r) for r in d["speedup"]])


@dataclass
class ModelProfile:
    """Everything measured for one model (bytes and MACs per image unless named otherwise).

    ``source`` is ``"registry"``, ``"module"``, ``"checkpoint"`` or ``"weights"`` (a registered
    model with a state-dict file's weights; for these two ``checkpoint`` is the file and the
    JSON form writes ``"checkpoint PATH"`` / ``"weights PATH"``). ``onnx_file`` is the exported fp32 graph
    under the run's ``onnx_dir`` (None in profiles saved before it was recorded).
    """

    name: str
    arch: str
    source: str
    weights: str
    input_shape: list[int]
    onnx_file: str | None
    is_resnet: bool
    parameters: int
    macs_per_image: int
    feature_adds: int
    expected_shortcut_adds: int | None
    peak_activation_bytes_per_image: int
    bytes_moved_per_image: int
    bytes_read_per_image: int
    bytes_written_per_image: int
    peak_step: str
    fused_add: FusedAddFigures
    memory: list[BatchMemory]
    latency: list[LatencyRecord] = field(default_factory=list)
    memory_check: dict[str, Any] | None = None
    int8: Int8Profile | None = None
    checkpoint: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (latency records without the model name)."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "checkpoint"}
        if self.checkpoint is not None:
            d["source"] = f"{self.source} {self.checkpoint}"
        d["fused_add"] = asdict(self.fused_add)
        d["memory"] = [asdict(m) for m in self.memory]
        d["latency"] = [r.as_dict() for r in self.latency]
        if self.int8 is not None:
            d["int8"] = self.int8.to_dict()
        return {k: v for k, v in d.items()
                if v is not None or k not in ("onnx_file", "memory_check", "int8")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ModelProfile:
        """The record back from :meth:`to_dict`."""
        source, _, checkpoint = d["source"].partition(" ")
        name = d["name"]
        return cls(**{
            **d, "onnx_file": d.get("onnx_file"), "source": source,
            "checkpoint": checkpoint or None,
            "fused_add": FusedAddFigures(**d["fused_add"]),
            "memory": [BatchMemory(**m) for m in d["memory"]],
            "latency": [LatencyRecord.from_dict(r, name) for r in d["latency"]],
            "int8": Int8Profile.from_dict(d["int8"], name) if "int8" in d else None,
        })


@dataclass
class PairComparison:
    """ResNet / plain ratios of one pair (above 1: the plain network is cheaper)."""

    plain: str
    resnet: str
    peak_ratio: float | None
    bytes_moved_ratio: float | None
    macs_ratio: float | None
    peak_ratio_fused_add: float | None
    bytes_moved_ratio_fused_add: float | None
    latency_ratio: list[LatencyRatio]
    latency_ratio_int8: list[LatencyRatio] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        d = asdict(self)
        if self.latency_ratio_int8 is None:
            del d["latency_ratio_int8"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PairComparison:
        """The record back from :meth:`to_dict`."""
        int8 = d.get("latency_ratio_int8")
        return cls(**{
            **d, "latency_ratio": [LatencyRatio(**r) for r in d["latency_ratio"]],
            "latency_ratio_int8": None if int8 is None else [LatencyRatio(**r) for r in int8],
        })


@dataclass
class ProfileResult:
    """A profile: the run's settings, machine and versions (``meta``), the models, the pairs,
    and how it measured (``settings``; None when read from JSON or merged, ``meta`` says it)."""

    meta: dict[str, Any]
    models: list[ModelProfile]
    pairs: list[PairComparison]
    settings: ProfileSettings | None = None
    runtimes: Any = None  # a RuntimeProfile (profile --runtime), else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``profile.json``)."""
        out = {"meta": self.meta, "models": [m.to_dict() for m in self.models],
               "pairs": [p.to_dict() for p in self.pairs]}
        if self.runtimes is not None:
            out["runtimes"] = self.runtimes.to_dict()
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProfileResult:
        """The profile back from :meth:`to_dict`, e.g. a saved ``profile.json``."""
        from .runtimes import RuntimeProfile

        runtimes = RuntimeProfile.from_dict(d["runtimes"]) if "runtimes" in d else None
        return cls(dict(d["meta"]), [ModelProfile.from_dict(m) for m in d["models"]],
                   [PairComparison.from_dict(p) for p in d["pairs"]], runtimes=runtimes)

    def model(self, name: str) -> ModelProfile:
        """The model called ``name``."""
        return next(m for m in self.models if m.name == name)

    def latency_settings(self) -> list[Setting]:
        """Every ``(threads, batch)`` at which some model's fp32 latency was measured, sorted."""
        return sorted({r.setting for m in self.models for r in m.latency})


def as_profile(result: ProfileResult | Mapping[str, Any]) -> ProfileResult:
    """``result``, or the profile its JSON form (a saved ``profile.json``) describes."""
    return result if isinstance(result, ProfileResult) else ProfileResult.from_dict(result)

