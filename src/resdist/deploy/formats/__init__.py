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
from typing import TYPE_CHECKING

from ...lazy import lazy_exports
from ..errors import DeployError

if TYPE_CHECKING:
    from ...data.contract import InputContract
    from .common import ExportJob, FileInfo, Runner, Written

__all__ = ["DEFAULT_OPSET", "FORMATS", "MAX_OPSET", "MIN_OPSET", "ExportJob", "FileInfo",
           "Format", "Runner", "Written", "check_export_contract", "check_export_target",
           "format_names", "format_of", "get_format"]

# the registry and the opsets are read by the command line's parser, so this module imports
# no torch; the types a format module works with come from .common on first use
__getattr__, __dir__ = lazy_exports(__name__, {".common": ("ExportJob", "FileInfo", "Runner",
                                                           "Written")})

#: ONNX opsets ``export --opset`` takes (18 and above: the torch.export-based exporter; lower:
#: the TorchScript-based one) and the default
MIN_OPSET, MAX_OPSET = 9, 23
DEFAULT_OPSET = 18


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
    Format("openvino", "OpenVINO", (".xml",), "OpenVINO", "openvino", int8=True),
    Format("executorch", "ExecuTorch", (".pte",), "ExecuTorch (XNNPACK)", "executorch",
           int8=True),
    Format("tflite", "LiteRT", (".tflite",), "LiteRT", "litert", int8=True),
    Format("safetensors", "safetensors", (".safetensors",), "PyTorch (state dict)",
           "safetensors"),
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


def check_export_target(out: str | os.PathLike, fmt: Format) -> Path:
    """The file ``out`` an export in format ``fmt`` may write, checked before anything is
    built: it names a file (not a folder, nor ``DIR/``), ends in the format's suffix (so a
    checkpoint such as ``RUN/last.pth`` or a file of notes is never taken for the target), and
    is either new or an earlier export of the same format, which the atomic write replaces
    only once the new file is complete.

    Raises:
        DeployError: naming the target and what to choose instead.
    """
    text = os.fspath(out)
    path = Path(text)
    example = f"model{fmt.suffixes[0]}"
    if not text or text.endswith(("/", os.sep)) or path.is_dir():
        raise DeployError(f"--out {text or repr(text)} names a folder, not a file; name the file "
                          f"to write, e.g. {path / example}")
    blocker = next((d for d in path.parents if d.exists() and not d.is_dir()), None)
    if blocker is not None:
        raise DeployError(f"--out {text}: {blocker} is a file, not a folder; choose another "
                          "--out")
    if path.suffix.lower() not in fmt.suffixes:
        raise DeployError(
            f"--out {text}: {fmt.label} files end in {' or '.join(fmt.suffixes)}, so "
            f"that no other file (a checkpoint, your own file) is replaced; name it e.g. "
            f"{path.with_name(path.stem + fmt.suffixes[0])}")
    ours = False
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise DeployError(f"--out {text} exists and is not a regular file; choose another "
                              "--out")
        if not fmt.impl().sniff(path):
            raise DeployError(f"--out {text} exists and is no {fmt.label} file, so resdist "
                              "did not write it and will not replace it; choose another --out, "
                              "or move that file away first")
        ours = True
    for suffix in _SIDE_FILES.get(fmt.name, ()):
        side = path.with_suffix(suffix)
        if not ours and (side.exists() or side.is_symlink()):
            raise DeployError(f"--out {text} would also write {side}, which exists and is no "
                              f"part of an earlier {fmt.label} export there; choose another "
                              "--out, or move that file away first")
    return path


#: files a format writes beside the one ``--out`` names (OpenVINO keeps its weights in a .bin)
_SIDE_FILES: dict[str, tuple[str, ...]] = {"openvino": (".bin",)}


def check_export_contract(contract: InputContract | None) -> None:
    """Check, before a file is written, that ``contract`` reads back from the JSON the file
    will carry (size limit, class names), so that no export is written and then refused.

    Raises:
        DeployError: the contract would not read back (the message says why).
    """
    if contract is None:
        return
    from ...data.contract import InputContract
    from ...data.errors import DataError

    try:
        InputContract.from_json(contract.to_json())
    except DataError as e:
        raise DeployError(f"the model's {e}; nothing was written") from e
