"""Reports of :func:`~resdist.deploy.profile.profile_models` results: markdown tables, a PNG
chart and JSON. They take a :class:`~.records.ProfileResult` or its JSON form, so a saved
``profile.json`` renders again as it was."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ...atomic import atomic_path, write_text_atomic
from ...tables import markdown_table
from ..errors import require
from .int8 import format_int8_table
from .records import ProfileResult, as_profile


def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit != "KiB" else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def _fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def format_table(result: ProfileResult | Mapping[str, Any]) -> str:
    """Markdown tables (aligned, readable on a console): memory/compute per model, latency
    per model and setting, and the ResNet/plain ratios of each pair.

    Args:
        result: a profile, or its JSON form (a saved ``profile.json``).
    """
    profile = as_profile(result)
    mem_rows = []
    for m in profile.models:
        adds = str(m.feature_adds)
        if m.expected_shortcut_adds not in (None, m.feature_adds):
            adds += f" (expected {m.expected_shortcut_adds})"
        mem_rows.append([
            m.name, "x".join(map(str, m.input_shape)), _fmt_count(m.parameters),
            _fmt_count(m.macs_per_image), adds, _fmt_bytes(m.peak_activation_bytes_per_image),
            _fmt_bytes(m.bytes_moved_per_image),
        ])
    parts = [markdown_table(
        ["model", "input", "params", "MACs/img", "feature Adds", "peak act./img",
         "bytes moved/img"], mem_rows,
    )]
    settings = profile.latency_settings()
    if settings:
        lat_rows = []
        for m in profile.models:
            by = {r.setting: r for r in m.latency}
            lat_rows.append([m.name, *(
                f"{by[k].median_ms:.2f} [{by[k].p10_ms:.2f}-{by[k].p90_ms:.2f}] n={by[k].runs}"
                if k in by else "-" for k in settings)])
        parts.append(markdown_table(
            ["ORT latency, ms per batch: median [p10-p90]"] + [f"t={t} b={b}" for t, b in settings],
            lat_rows,
        ))
    if profile.pairs:
        pair_rows = []
        for p in profile.pairs:
            by_setting = {r.setting: r.ratio for r in p.latency_ratio}
            pair_rows.append([
                f"{p.resnet} / {p.plain}", _fmt_ratio(p.macs_ratio), _fmt_ratio(p.peak_ratio),
                _fmt_ratio(p.bytes_moved_ratio),
                f"{_fmt_ratio(p.peak_ratio_fused_add)} / "
                f"{_fmt_ratio(p.bytes_moved_ratio_fused_add)}",
                *(_fmt_ratio(by_setting.get(k)) for k in settings),
            ])
        parts.append(markdown_table(
            ["ResNet / plain", "MACs", "peak act.", "bytes moved", "peak / bytes, Conv+Add fused"]
            + [f"latency t={t} b={b}" for t, b in settings], pair_rows,
        ))
    return "\n\n".join(parts)


def _plot(profile: ProfileResult, path: Path) -> None:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = profile.models
    names = [m.name for m in models]
    colors = ["tab:red" if m.is_resnet else "tab:blue" for m in models]
    settings = profile.latency_settings()
    n_panels = 3 if profile.pairs and settings else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 4.8))
    for ax, key, title in (
        (axes[0], "peak_activation_bytes_per_image", "Peak live activations per image (MiB)"),
        (axes[1], "bytes_moved_per_image", "Feature-map bytes moved per image (MiB)"),
    ):
        figures = [getattr(m, key) for m in models]
        vals = [v / 2**20 for v in figures]
        bars = ax.bar(range(len(models)), vals, color=colors)
        ax.bar_label(bars, labels=[_fmt_bytes(v) for v in figures], fontsize=6,
                     rotation=90, padding=2)
        ax.set_xticks(range(len(models)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(min(vals) / 2, max(vals) * 6)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if n_panels == 3:
        ax = axes[2]
        pairs = profile.pairs
        width = 0.8 / max(len(settings), 1)
        all_vals: list[float] = []
        for k, (t, b) in enumerate(settings):
            vals = []
            for p in pairs:
                by_setting = {r.setting: r.ratio for r in p.latency_ratio}
                vals.append(by_setting.get((t, b)) or np.nan)
            ax.bar(np.arange(len(pairs)) + k * width - 0.4 + width / 2, vals, width,
                   label=f"threads={t}, batch={b}")
            all_vals += [v for v in vals if np.isfinite(v)]
        ax.axhline(1.0, color="k", lw=0.8)
        if all_vals:
            ax.set_ylim(min(0.9, min(all_vals) - 0.05), max(all_vals) + 0.15)
        ax.set_xticks(range(len(pairs)), [p.plain for p in pairs], rotation=60, ha="right",
                      fontsize=8)
        ax.set_title("ORT latency ratio ResNet / plain", fontsize=10)
        ax.legend(fontsize=6, ncol=2, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("ResNet (red) vs plain (blue): fp32, sequential liveness over the ONNX graph",
                 fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:  # a full disk leaves no half-written chart
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write_profile_report(
    result: ProfileResult | Mapping[str, Any], out_dir: str | os.PathLike, name: str = "profile"
) -> str:
    """Write ``<name>.json``, ``<name>.png`` and ``<name>.md`` (and ``<name>_int8.md`` when the
    models were timed in INT8 too) under ``out_dir``; returns the markdown (tables plus the
    command, machine and versions recorded in ``meta``).

    Args:
        result: a profile, or its JSON form (a saved ``profile.json``, which is written again
            as it was).
        out_dir: the folder (created if missing).
        name: the files' stem.
    """
    profile = as_profile(result)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / f"{name}.json",
                      json.dumps(profile.to_dict(), indent=2, default=str) + "\n")
    _plot(profile, out / f"{name}.png")
    meta = profile.meta
    lines = [f"# Deploy profile: ResNet vs plain ({meta.get('date', '')})", ""]
    if meta.get("command"):
        lines += ["Produced by:", "", f"    {meta['command']}", ""]
    lines += [
        f"- CPU: {meta.get('cpu', '?')}{_isa(meta)} ({meta.get('cores', '?')} cores "
        "available); "
        f"ORT threads: {', '.join(map(str, meta.get('threads', [])))}",
        f"- torch {meta.get('torch', '?')}, onnxruntime {meta.get('onnxruntime', '?')}, "
        f"onnx {meta.get('onnx', '?')}, Python {meta.get('python', '?')}",
        f"- ORT session: {meta.get('ort_session', '')}; denormals {meta.get('denormals', '')}",
        f"- Memory: {meta.get('memory_convention', '')}",
        f"- Ratios: {meta.get('ratios', '')}",
    ]
    weights = sorted({m.weights for m in profile.models})
    lines.append(f"- Weights: {'; '.join(weights)}")
    if "loadavg_start" in meta:
        lines.append(f"- Load average (1/5/15 min) at start {meta['loadavg_start']}, "
                     f"end {meta.get('loadavg_end')}; other processes may have shared the CPU")
    if meta.get("note"):
        lines.append(f"- Note: {meta['note']}")
    if meta.get("highlights"):
        lines += ["", "Highlights:", "", *(f"- {h}" for h in meta["highlights"])]
    lines += ["", format_table(profile), "", f"![chart]({name}.png)", ""]
    checks = [m for m in profile.models if m.memory_check]
    if checks:
        lines += ["Cross-check of the liveness figure against PyTorch's own allocations "
                  "(torch.fx + dispatch tracking, batch 1; PyTorch's `+` is not in place):", ""]
        rows = []
        for m in checks:
            c = m.memory_check
            rows.append([m.name, _fmt_bytes(c.get("liveness_peak_bytes")),
                         _fmt_bytes(c.get("liveness_peak_bytes_torch_rules")),
                         _fmt_bytes(c.get("measured_peak_bytes")), c.get("reason") or ""])
        lines += [markdown_table(["model", "liveness (ours)", "liveness (torch rules)",
                          "PyTorch measured", "note"], rows), ""]
    md = "\n".join(lines)
    write_text_atomic(out / f"{name}.md", md)
    if any(m.int8 for m in profile.models):
        write_text_atomic(out / f"{name}_int8.md", format_int8_table(profile) + "\n")
    if profile.runtimes is not None:
        write_text_atomic(out / f"{name}_runtimes.md", runtime_report(profile) + "\n")
    return md


def runtime_report(profile: ProfileResult) -> str:
    """The runtime table of ``profile`` (``profile --runtime``) with its machine."""
    from .runtimes import format_runtime_table

    pairs = [(p.plain, p.resnet) for p in profile.pairs]
    meta = profile.meta
    head = [f"# ResNet vs plain on each runtime ({meta.get('date', '')})", "",
            f"- CPU: {meta.get('cpu', '?')} ({meta.get('cores', '?')} cores available)",
            "- Medians of interleaved runs after warm-up; ratio = ResNet / plain (above 1: "
            "the plain network is faster)", ""]
    return "\n".join(head) + "\n" + format_runtime_table(profile.runtimes, pairs)


def _isa(meta: dict) -> str:
    """`` (AVX2, no VNNI)``: what the CPU computes with, as far as the report knows."""
    parts = [meta["isa"]] if meta.get("isa") else []
    if "vnni" in meta:
        parts.append("VNNI" if meta["vnni"] else "no VNNI")
    return f" ({', '.join(parts)})" if parts else ""
