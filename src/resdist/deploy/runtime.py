"""One way to open an ONNX model in ONNX Runtime for resdist's own checks and evaluations."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

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


def session_runner(session: Any, source: str | os.PathLike) -> Any:
    """A ``(N, C, H, W)`` batch -> first-output function of an ONNX Runtime session whose
    failures at run time (a graph that only works at some batch size, a bad node) raise
    :class:`DeployError` with ONNX Runtime's first line."""
    name = session.get_inputs()[0].name

    def run(batch: np.ndarray) -> Any:
        try:
            return session.run(None, {name: batch})[0]
        except Exception as e:
            text = " ".join(str(e).split())
            detail = text[:200] + (" ..." if len(text) > 200 else "") or type(e).__name__
            raise DeployError(f"{source}: ONNX Runtime failed on a batch of shape "
                              f"{tuple(batch.shape)}: {detail}; the graph does not run on "
                              "this input (export it again with resdist export)") from e

    return run


def check_logits(out: Any, rows: int, classes: int | None, source: str | os.PathLike
                 ) -> np.ndarray:
    """``out`` as a float ``(rows, classes)`` array of finite logits.

    Raises:
        DeployError: the model's output is not numbers, not of that shape (a stranger's graph
            with another output rank, no rows, or another class count than its contract
            names), or holds NaN or infinity.
    """
    arr = np.asarray(out)
    if arr.dtype.kind not in "fiu":
        raise DeployError(f"{source}: the model outputs {arr.dtype} values, not logits (numbers); "
                          "it is no classifier resdist can read")
    if arr.ndim != 2 or arr.shape[0] != rows or arr.shape[1] < 1:
        raise DeployError(f"{source}: the model outputs shape {tuple(arr.shape)} for {rows} "
                          "image(s), not (images, classes); it is no classifier resdist can read")
    if classes is not None and arr.shape[1] != classes:
        raise DeployError(f"{source}: the model outputs {arr.shape[1]} logits, but {classes} "
                          "classes are named; export it again")
    if not np.isfinite(arr).all():
        raise DeployError(f"{source}: the model outputs NaN or infinite logits; its weights are "
                          "damaged (or it diverged in training)")
    return arr.astype(np.float32, copy=False)
