"""One way to open an ONNX model in ONNX Runtime for resdist's own checks and evaluations."""

from __future__ import annotations

import os
from typing import Any

from .errors import DeployError, require


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_bytes(path: str) -> bytes:
    """The bytes of the ONNX file at ``path``, for a path ONNX Runtime cannot take."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise DeployError(f"cannot read {path}: {e.strerror}") from e


def cpu_session(model: str | os.PathLike | bytes, threads: int | None = None) -> Any:
    """An ONNX Runtime ``InferenceSession`` on the CPU provider, its log quiet (errors only).

    ``model`` is a file path or a serialised model; ``threads`` sets the intra-op thread count
    (None: ONNX Runtime's default). A model ONNX Runtime cannot load raises
    :class:`DeployError` with the first line of its reason. Latency measurements use their own
    sessions (:mod:`resdist.deploy.profile.latency`), which also fix threading and spinning.
    """
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
    source = model if isinstance(model, bytes) else os.fspath(model)
    if isinstance(source, str) and not _utf8(source):
        # a non-ASCII path under LANG=C without Python's UTF-8 mode: ONNX Runtime takes only
        # UTF-8 paths, so it gets the file's bytes (a model with external data cannot load)
        source = _read_bytes(source)
    try:
        return ort.InferenceSession(source, so, providers=["CPUExecutionProvider"])
    except Exception as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        where = "the model" if isinstance(model, bytes) else model
        raise DeployError(f"ONNX Runtime cannot load {where}: {detail}") from e
