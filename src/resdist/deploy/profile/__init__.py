"""What removing shortcuts buys at inference: activation memory, bytes moved, MACs, latency.

Memory figures come from a liveness pass over the exported ONNX graph
(:func:`analyze_onnx`, :mod:`.liveness`, whose docstring gives the conventions), checked against
PyTorch's own allocations (:func:`memory_cross_check`, :mod:`.memory`); latency from ONNX
Runtime on the CPU (:func:`measure_latency`, :mod:`.latency`). :func:`profile_models`
(:mod:`.compare`) measures ResNets and their plain counterparts side by side into a
:class:`ProfileResult` (:mod:`.records`), :func:`add_int8_latency` (:mod:`.int8`) times their
INT8 versions beside them, and :func:`write_profile_report` (:mod:`.report`) writes JSON, a PNG
chart and a markdown table.
"""

from ...machine import available_cores, cpu_model, environment, load_average
from .compare import merge_profiles, profile_models
from .int8 import add_int8_latency, format_int8_table
from .latency import LatencyRatio, LatencyRecord, latency_ratios, measure_latency
from .liveness import GraphProfile, analyze_onnx
from .memory import memory_cross_check, torch_activation_peak
from .records import (
    BatchMemory,
    FusedAddFigures,
    Int8Profile,
    ModelProfile,
    PairComparison,
    ProfileResult,
    ProfileSettings,
)
from .report import format_table, write_profile_report

__all__ = [
    "BatchMemory", "FusedAddFigures", "GraphProfile", "Int8Profile", "LatencyRatio",
    "LatencyRecord", "ModelProfile", "PairComparison", "ProfileResult", "ProfileSettings",
    "add_int8_latency", "analyze_onnx", "available_cores", "cpu_model", "environment",
    "format_int8_table", "format_table", "latency_ratios", "load_average", "measure_latency",
    "memory_cross_check", "merge_profiles", "profile_models", "torch_activation_peak",
    "write_profile_report",
]
