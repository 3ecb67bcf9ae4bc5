"""The main job (``make demo``): on real Fashion-MNIST, on the CPU, train the ResNet teacher,
its plain counterpart with cross-entropy, and the plain student with JointRD through that
teacher; print their accuracies side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .config import Config
from .presets import load_preset
from .reproduce import Row, machine, machine_name, run_config

#: The packaged preset holding the demo's settings (shared with the accuracy suite, whose seed-0
#: teacher, CE and JointRD runs the demo repeats).
DEMO_PRESET = "demo"


def demo_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """The demo's base config: ``path`` (a YAML file) or the packaged ``demo`` preset, then
    ``section.key=value`` overrides."""
    cfg = Config.from_yaml(path) if path else load_preset(DEMO_PRESET)
    return cfg.override(list(overrides or []))


def run_demo(
    config: str | None = None,
    data_dir: str | None = None,
    out: str = "runs/demo",
    overrides: list[str] | None = None,
) -> int:
    """Train teacher, plain CE and plain JointRD; print and save a summary table."""
    from .engine.trainer import train
    from .models import teacher_name_for

    start = time.perf_counter()
    base = demo_config(config, overrides)
    if data_dir:
        base.data.data_dir = data_dir
    student = base.model.name
    teacher = teacher_name_for(student)
    out_dir = Path(out)
    runs = [
        (f"{teacher} (teacher)", teacher, Row("ce")),
        (f"{student}", student, Row("ce")),
        (f"{student}", student, Row("jointrd")),
    ]
    rows = []
    for label, model, row in runs:
        method = row.method
        cfg = run_config(base, model, row, teacher, out_dir)
        print(f"\n== {label}, {method} ==", flush=True)
        result = train(cfg.validate())
        final = result.final
        rows.append({
            "model": label, "method": method, "test_top1": final.get("test_top1"),
            "best_test_top1": result.best("test_top1"), "params": result.num_params,
            "train_time_s": result.train_time_s,
            "images_per_s": sum(r["images_per_s"] for r in result.history) / len(result.history),
        })
    wall_s = time.perf_counter() - start
    table = format_table(rows, base, wall_s)
    print("\n" + table)
    (out_dir / "summary.json").write_text(json.dumps(
        {"config": base.to_dict(), "rows": rows, "machine": machine(base.train.device), "wall_s": wall_s},
        indent=2))
    (out_dir / "summary.md").write_text(table + "\n")
    print(f"\nsaved {out_dir / 'summary.md'} and {out_dir / 'summary.json'}")
    return 0


def machine_line(device: str = "auto") -> str:
    """``CPU model (ISA), N cores, torch X`` of this machine (the GPU first when ``device``
    trains on one)."""
    return machine_name(machine(device))


def format_table(rows: list[dict[str, Any]], cfg: Config, wall_s: float | None = None) -> str:
    n = cfg.data.limit_train or "all"
    took = f"; {int(wall_s // 60)} min {int(wall_s % 60)} s in all" if wall_s is not None else ""
    lines = [
        f"Fashion-MNIST ({n} training images, {cfg.train.epochs} epoch(s), seed {cfg.train.seed}); "
        "test top-1 at the final epoch",
        f"Machine: {machine_line(cfg.train.device)}{took} (a short budget's accuracy depends on the CPU's "
        "rounding)",
        "",
        "| model | method | test top-1 (%) | best epoch (%) | params | train time (s) | img/s |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['method']} | {r['test_top1']:.2f} | {r['best_test_top1']:.2f} "
            f"| {r['params'] / 1e6:.3f}M | {r['train_time_s']:.0f} | {r['images_per_s']:.0f} |"
        )
    return "\n".join(lines)
