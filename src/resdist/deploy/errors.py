"""User-facing errors of :mod:`resdist.deploy` (``ValueError`` subclasses, one clear line)."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import ResdistError


class DeployError(ResdistError, ValueError):
    """Export or profiling cannot proceed; the message says why and what to do."""


class MissingDependencyError(DeployError):
    """An optional dependency (onnx, onnxruntime, matplotlib, a runtime) is not installed."""


_EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx", "matplotlib": "plot",
           "openvino": "openvino", "nncf": "openvino", "executorch": "executorch",
           "torchao": "executorch", "ai_edge_litert": "litert", "litert_torch": "litert",
           "safetensors": "safetensors", "tflite_micro": "tflm"}


def require(module: str) -> ModuleType:
    """Import an optional dependency or raise :class:`MissingDependencyError` naming the extra."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = _EXTRAS.get(module.split(".")[0], "onnx")
        raise MissingDependencyError(
            f"{module} is not installed; install it with: pip install 'resdist[{extra}]'"
        ) from e
