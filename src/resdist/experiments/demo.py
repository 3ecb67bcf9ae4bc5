"""The main job (``make demo``): on real Fashion-MNIST, on the CPU, evaluate the ResNet teacher
(the packaged pretrained one, or train it), train its plain counterpart with cross-entropy and
the plain student with JointRD through that teacher; print their accuracies side by side."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..config import Config
from ..machine import fingerprint, fingerprint_name
from ..presets import load_preset
from ..tables import markdown_table
from .suites import Row, run_config

#: The packaged preset holding the demo's settings.
DEMO_PRESET = "demo"
#: The packaged teacher the demo evaluates with its own preset (:mod:`resdist.weights`).
DEMO_TEACHER = "fashion-mnist-resnet32"
PACKAGED_TEACHER_NOTE = ("the packaged ResNet-32, seed-0 teacher of `resdist reproduce "
                         "fashion-mnist-long` (all 60k training images, 3 epochs)")


def demo_config(path: str | None = None, overrides: list[str] | None = None) -> Config:
    """The demo's base config: ``path`` (a YAML file) or the packaged ``demo`` preset, then
    ``section.key=value`` overrides."""
    cfg = Config.from_yaml(path) if path else load_preset(DEMO_PRESET)
    return cfg.override(list(overrides or []))


def demo_teacher(config: str | None, base: Config, train_teacher: bool) -> str | None:
    """The checkpoint the demo's students learn from, or ``None`` to train the teacher first:
    the packaged ResNet-32 with the packaged preset, else the config's ``teacher.checkpoint``."""
    if train_teacher:
        return None
    if config is None:
        from ..weights import packaged_weights

        return str(packaged_weights(DEMO_TEACHER))
    return base.teacher.checkpoint


def run_demo(
    config: str | None = None,
    data_dir: str | None = None,
    out: str = "runs/demo",
    overrides: list[str] | None = None,
    train_teacher: bool = False,
) -> int:
    """Teacher (evaluated, or trained), plain CE and plain JointRD; print and save a table."""
    from ..engine.evaluation import evaluate_checkpoint
    from ..engine.trainer import train
    from ..models import teacher_name_for

    start = time.perf_counter()
    base = demo_config(config, overrides)
    if data_dir:
        base.data.data_dir = data_dir
    base.validate()
    student = base.model.name
    teacher = teacher_name_for(student)
    out_dir = Path(out)
    pretrained = demo_teacher(config, base, train_teacher)
    rows = []
    if pretrained is not None:
        print(f"\n== {teacher} (teacher), pretrained: {pretrained} ==", flush=True)
        score = evaluate_checkpoint(pretrained, data=base.data.name,
                                    data_dir=base.data.data_dir,
                                    download=base.data.download, device=base.train.device)
        print(score.line(), flush=True)
        rows.append({"model": f"{score.model_name} (teacher)", "method": "pretrained",
                     "test_top1": score.top1, "best_test_top1": None, "params": None,
                     "train_time_s": None, "images_per_s": None})
    runs = [] if pretrained is not None else [(f"{teacher} (teacher)", teacher, Row("ce"))]
    runs += [(student, student, Row("ce")), (student, student, Row("jointrd"))]
    for label, model, row in runs:
        cfg = run_config(base, model, row, teacher, out_dir)
        if row.method != "ce" and pretrained is not None:
            cfg.teacher.checkpoint = pretrained
        print(f"\n== {label}, {row.method} ==", flush=True)
        result = train(cfg.validate())
        rows.append({
            "model": label, "method": row.method, "test_top1": result.final.get("test_top1"),
            "best_test_top1": result.best("test_top1"), "params": result.num_params,
            "train_time_s": result.train_time_s,
            "images_per_s": sum(r["images_per_s"] for r in result.history) / len(result.history),
        })
    wall_s = time.perf_counter() - start
    about = None
    if pretrained is not None:
        about = PACKAGED_TEACHER_NOTE if config is None else f"checkpoint {pretrained}"
    table = format_table(rows, base, wall_s, about)
    print("\n" + table)
    write_text_atomic(out_dir / "summary.json", json.dumps(
        {"config": base.to_dict(), "teacher_checkpoint": pretrained, "rows": rows,
         "machine": fingerprint(base.train.device), "wall_s": wall_s}, indent=2))
    write_text_atomic(out_dir / "summary.md", table + "\n")
    print(f"\nsaved {out_dir / 'summary.md'} and {out_dir / 'summary.json'}")
    return 0


def machine_line(device: str = "auto") -> str:
    """``CPU model (ISA), N cores, torch X`` of this machine (the GPU first when ``device``
    trains on one)."""
    return fingerprint_name(fingerprint(device))


def format_table(rows: list[dict[str, Any]], cfg: Config, wall_s: float | None = None,
                 teacher: str | None = None) -> str:
    """The demo's markdown table: what was trained on what, where, and each row's figures."""
    n = cfg.data.limit_train or "all"
    took = f"; {int(wall_s // 60)} min {int(wall_s % 60)} s in all" if wall_s is not None else ""
    lines = [
        f"Fashion-MNIST ({n} training images, {cfg.train.epochs} epoch(s), seed {cfg.train.seed}); "
        "test top-1 at the final epoch",
        f"Machine: {machine_line(cfg.train.device)}{took} (a short budget's accuracy depends on the CPU's "
        "rounding)",
        *([f"Teacher: evaluated here, not trained: {teacher}"] if teacher else []),
        "",
    ]

    def cell(value: float | None, fmt: str, unit: str = "") -> str:
        return "-" if value is None else format(value, fmt) + unit

    cells = [[r["model"], r["method"], f"{r['test_top1']:.2f}", cell(r["best_test_top1"], ".2f"),
              cell(None if r["params"] is None else r["params"] / 1e6, ".3f", "M"),
              cell(r["train_time_s"], ".0f"), cell(r["images_per_s"], ".0f")] for r in rows]
    lines.append(markdown_table(["model", "method", "test top-1 (%)", "best epoch (%)", "params",
                                 "train time (s)", "img/s"], cells))
    return "\n".join(lines)
