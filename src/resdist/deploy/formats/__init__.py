"""Export formats, one module each, and the one registry ``export``, ``predict``, ``eval`` and
``profile`` look them up in.

A format module provides ``write(job) -> Written`` (export, read back, verify),
``read_contract(path)`` and ``file_info(path)`` (both without running the file),
``sniff(path)`` (is this file of the format?) and ``load_runner(path, threads, trusted)``
(the file in its own runtime, as a batch -> logits function). Adding a runtime is one module
plus one :data:`FORMATS` line.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from ...data.contract import InputContract
from ..errors import DeployError
from .common import ExportJob, FileInfo, Runner, Written

__all__ = ["FORMATS", "ExportJob", "FileInfo", "Format", "Runner", "Written", "format_names",
           "format_of", "get_format"]


@dataclass(frozen=True)
class Format:
    """One export format: its file suffixes, the extra that installs its runtime, and the
    module that writes, reads and runs it.

    Attributes:
        name: the ``--format`` name.
        label: how reports name it.
        suffixes: file suffixes (the first is the default).
        runtime: the runtime that runs it.
        module: the module implementing it (imported on first use).
        int8: whether ``--quantize int8`` goes through the runtime's own quantiser.
        runs_code: whether loading a file runs code it carries (TorchScript).
    """

    name: str
    label: str
    suffixes: tuple[str, ...]
    runtime: str
    module: str
    int8: bool = False
    runs_code: bool = False

    def impl(self) -> ModuleType:
        """The implementing module."""
        return importlib.import_module(f"{__name__}.{self.module}")

    def write(self, job: ExportJob) -> Written:
        """Write ``job`` in this format (atomically), read it back and verify it."""
        return self.impl().write(job)

    def read_contract(self, path: str | os.PathLike) -> InputContract | None:
        """The input contract ``path`` records (None: none), read without running it."""
        path = Path(path)
        if not path.is_file():
            raise DeployError(f"{self.label} file not found: {path}")
        return self.impl().read_contract(path)

    def file_info(self, path: str | os.PathLike) -> FileInfo:
        """Precision, recorded data set and fixed input shape, read without running it."""
        return self.impl().file_info(Path(path))

    def load_runner(self, path: str | os.PathLike, threads: int | None = None,
                    trusted: bool = False) -> Runner:
        """``path`` in its own runtime on the CPU, as a batch -> logits function."""
        return self.impl().load_runner(Path(path), threads, trusted)


FORMATS: dict[str, Format] = {f.name: f for f in (
    Format("onnx", "ONNX", (".onnx",), "ONNX Runtime", "onnx", int8=True),
    Format("torchscript", "TorchScript", (".pt", ".ts", ".torchscript"), "torch.jit",
           "torchscript", runs_code=True),
)}
"""Every format resdist exports, by ``--format`` name."""


def format_names() -> list[str]:
    """The ``--format`` choices."""
    return list(FORMATS)


def get_format(name: str) -> Format:
    """The format called ``name``, or one :class:`DeployError` line listing the choices."""
    try:
        return FORMATS[name]
    except KeyError:
        raise DeployError(f"unknown format {name!r}: choose one of "
                          f"{', '.join(FORMATS)}") from None


def format_of(path: str | os.PathLike) -> Format | None:
    """The export format of the file at ``path``, or None for a checkpoint, state dict or run
    folder. Decided by the contents where a format can be recognised without running anything
    (a TorchScript archive, an ONNX graph), else by the suffix; nothing in the file runs."""
    path = Path(path)
    if path.is_dir():
        return None
    if path.is_file() and FORMATS["torchscript"].impl().sniff(path):
        return FORMATS["torchscript"]
    by_suffix = next((f for f in FORMATS.values() if path.suffix.lower() in f.suffixes
                      and f.name != "torchscript"), None)
    if by_suffix is not None:
        return by_suffix
    if path.is_file() and not _is_zip(path):
        try:
            if FORMATS["onnx"].impl().sniff(path):
                return FORMATS["onnx"]
        except DeployError:  # onnx not installed: not an ONNX file we could run anyway
            return None
    return None


def _is_zip(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)
