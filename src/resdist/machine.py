"""The machine resdist runs on: CPU model, cores, free memory, load and library versions.

Training records, the suites' run records and the deploy reports all describe their machine
with these functions; allocation checks ask :func:`available_memory` before building anything
large."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    """The CPU's feature flags (``/proc/cpuinfo``'s ``flags``: ``avx2``, ``avx512_vnni``, ...);
    empty where they are not known (not Linux, or no x86 flags line)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    return set()


#: x86 flags of the INT8 dot-product instructions that keep u8s8 kernels from saturating
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def x86_without_vnni() -> bool:
    """True on an x86 CPU known to lack the VNNI INT8 dot-product instructions (``avx512_vnni``,
    ``avx_vnni``), where ONNX Runtime's u8s8 INT8 kernels can saturate; False where it has them
    or the flags are not known."""
    flags = cpu_flags()
    return "avx2" in flags and not flags & VNNI_FLAGS


def available_memory() -> int | None:
    """Bytes of memory this machine can still give (``MemAvailable`` of ``/proc/meminfo``, else
    free physical pages); ``None`` where neither is known."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(AttributeError, ValueError, OSError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: a byte count for messages."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded; empty where the system has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def environment() -> dict[str, Any]:
    """CPU, the vector instructions torch uses on it (``isa``), whether it has VNNI (``vnni``,
    x86 only: INT8 figures depend on it), cores, Python, torch, platform, onnx/onnxruntime
    versions and the load average (``loadavg_start``) now: what a benchmark records beside its
    figures."""
    import torch

    env: dict[str, Any] = {
        "cpu": cpu_model(),
        "isa": torch.backends.cpu.get_cpu_capability(),
        "cores": available_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    if "avx2" in (flags := cpu_flags()):
        env["vnni"] = bool(flags & VNNI_FLAGS)
    for mod in ("onnx", "onnxruntime"):
        with contextlib.suppress(ImportError):
            env[mod] = __import__(mod).__version__
    if load := load_average():
        env["loadavg_start"] = load
    return env


def fingerprint(device: str = "auto") -> dict[str, Any]:
    """The machine a figure was measured on: CPU model, the vector instructions torch uses on it
    (``AVX512``, ``AVX2``, ...), core count and torch version, plus the GPU's name when
    ``device`` (a ``train.device`` value) trains on CUDA here. Accuracy after a short budget
    depends on the machine's floating-point rounding, so run records and reports name it."""
    import torch

    found: dict[str, Any] = {"cpu": cpu_model(), "isa": torch.backends.cpu.get_cpu_capability(),
                             "cores": available_cores(), "torch": torch.__version__}
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and torch.cuda.is_available():
        found["gpu"] = torch.cuda.get_device_name(dev.index)
    return found


def fingerprint_name(found: dict[str, Any]) -> str:
    """``CPU (ISA), N cores, torch X`` of a :func:`fingerprint`; ``GPU on CPU (ISA), ...`` for
    a run trained on a GPU."""
    isa = f" ({found['isa']})" if found.get("isa") else ""
    gpu = f"{found['gpu']} GPU on " if found.get("gpu") else ""
    return f"{gpu}{found['cpu']}{isa}, {found['cores']} cores, torch {found['torch']}"
