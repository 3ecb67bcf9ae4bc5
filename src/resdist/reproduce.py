"""``resdist reproduce fashion-mnist``: the accuracy evidence we can produce on a CPU.

Trains, on the real Fashion-MNIST training set and evaluated on its test set, the ResNet teacher
and the plain student with each method (CE, Hinton KD, feature KD, JointRD), with the same
architecture, schedule and seeds; students of seed ``s`` learn from the teacher of seed ``s``.
Writes ``accuracy.json``, ``accuracy.md`` (mean and spread over seeds) and ``accuracy.png``
(test-accuracy curves). Finished runs are reused, so an interrupted suite can be restarted.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import Config, check_choice
from .presets import preset_dict

#: Shared settings of the Fashion-MNIST suite: the ``demo`` preset (the one place they are
#: written; the demo reads it too) without progress bars. Depth 32 is the smallest thin net whose
#: plain version trails its ResNet by at least a point in this budget on a validation split
#: (README "Results" gives the check).
_DEMO = preset_dict("demo")
FASHION_MNIST_SUITE: dict[str, Any] = {
    **_DEMO, "train": {**_DEMO.get("train", {}), "progress": False},
}


@dataclass(frozen=True)
class Row:
    """One student row of a suite: a method plus config overrides (``--set`` syntax)."""

    method: str
    variant: str = ""  # run-directory suffix; empty for the paper/released defaults
    label: str = ""  # shown after the network name in the table
    overrides: tuple[str, ...] = ()


#: Student rows. Every row is reported and none is selected on the test set. "Dirac" is the
#: released code's Dirac-parametrised student (folded into plain convs at export, so the deployed
#: network is the same). The lambda 1e-4 row is the one choice made here, on a validation split
#: (README "Accuracy evidence").
STUDENT_ROWS: tuple[Row, ...] = (
    Row("ce"), Row("kd"), Row("feature-kd"), Row("jointrd"),
    Row("jointrd", "lambda1e-4", "lambda 1e-4, chosen on val", ("distill.feature_weight=1e-4",)),
    Row("ce", "dirac", "Dirac", ("model.dirac=true",)),
    Row("jointrd", "dirac", "Dirac", ("model.dirac=true",)),
)
SUITES = {"fashion-mnist": FASHION_MNIST_SUITE}


def run_name(model: str, row: Row) -> str:
    """A run's directory name: ``{model}-{method}[-{variant}]``."""
    return "-".join(filter(None, (model, row.method, row.variant)))


def run_config(base: Config, model: str, row: Row, teacher: str, root: Path) -> Config:
    """The config of one run: ``model`` trained as ``row`` says, in ``root/run_name``; students
    learn from the teacher run beside them (``root/{teacher}-ce/last.pth``). The run resumes
    what its folder already holds (an interrupted run continues, a finished one is kept)."""
    cfg = Config.from_dict(base.to_dict()).override(list(row.overrides))
    cfg.model.name, cfg.distill.method = model, row.method
    cfg.train.out = str(root / run_name(model, row))
    cfg.train.resume = True
    if row.method != "ce":
        cfg.teacher.checkpoint = str(root / run_name(teacher, Row("ce")) / "last.pth")
    return cfg


def _finished(run_dir: Path, epochs: int) -> list[dict[str, Any]] | None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return None
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a crash
            continue
    return rows if rows and rows[-1].get("epoch") == epochs else None


def run_suite(
    name: str = "fashion-mnist",
    seeds: tuple[int, ...] = (0, 1, 2),
    out: str | Path = "runs/reproduce",
    overrides: list[str] | None = None,
    results_dir: str | Path | None = None,
    command: str = "",
) -> dict[str, Any]:
    """Train every (method, seed) of suite ``name``; return and save the summary."""
    from .engine.trainer import train
    from .models import teacher_name_for

    check_choice("suite", name, list(SUITES), "suite")
    base = Config.from_dict(SUITES[name]).override(list(overrides or [])).validate()
    student = base.model.name
    teacher = teacher_name_for(student)
    out = Path(out)
    runs: list[dict[str, Any]] = []
    plan = [(teacher, Row("ce"))] + [(student, row) for row in STUDENT_ROWS]
    for seed in seeds:
        for model, row in plan:
            cfg = run_config(base, model, row, teacher, out / f"seed{seed}")
            cfg.train.seed = seed
            history = _finished(Path(cfg.train.out), cfg.train.epochs)
            what = " ".join(filter(None, (f"seed {seed}:", model, row.method, row.variant)))
            if history is None:
                print(f"== {what} ==", flush=True)
                history = train(cfg).history
            else:
                print(f"== {what}: finished run reused ==", flush=True)
            label = f"{model} ({row.label})" if row.label else model
            runs.append({"model": label, "method": row.method, "seed": seed, "history": history})
    summary = summarize(runs, base, seeds, command)
    summary["machine"] = machine()
    if results_dir is not None:
        write_report(summary, Path(results_dir))
    return summary


def summarize(runs: list[dict[str, Any]], cfg: Config, seeds, command: str) -> dict[str, Any]:
    rows = []
    keys = []
    for r in runs:
        k = (r["model"], r["method"])
        if k not in keys:
            keys.append(k)
    for model, method in keys:
        rs = [r for r in runs if (r["model"], r["method"]) == (model, method)]
        final = [r["history"][-1]["test_top1"] for r in rs]
        best = [max(h["test_top1"] for h in r["history"]) for r in rs]
        time_s = [sum(h["epoch_time_s"] for h in r["history"]) for r in rs]
        rows.append({
            "model": model, "method": method, "seeds": [r["seed"] for r in rs],
            "final_top1": final, "final_mean": statistics.fmean(final),
            "final_std": statistics.stdev(final) if len(final) > 1 else 0.0,
            "best_top1": best, "best_mean": statistics.fmean(best),
            "train_time_s_mean": statistics.fmean(time_s),
            "curves": [[h["test_top1"] for h in r["history"]] for r in rs],
        })
    return {"config": cfg.to_dict(), "seeds": list(seeds), "command": command, "rows": rows}


def machine() -> dict[str, Any]:
    """The CPU model, core count and torch version: accuracy after a short budget depends on
    the machine's floating-point rounding, so every figure names where it was measured."""
    import torch

    from .deploy.profile.environment import available_cores, cpu_model

    return {"cpu": cpu_model(), "cores": available_cores(), "torch": torch.__version__}


#: Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom (beyond: 1.96).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def paired_differences(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-seed paired differences of final top-1 between rows that share seeds (the students
    of seed s share the teacher and the data order): for every JointRD row, JointRD - CE,
    JointRD - feature KD and teacher - JointRD. Each comes with its mean, sample std and a 95%
    t interval (mean +- t * std / sqrt(n); none for one seed)."""
    rows = summary["rows"]
    teacher = rows[0]  # the suite trains the teacher first
    student = next((r for r in rows if r["method"] == "ce" and r is not teacher), None)
    plain = {r["method"]: r for r in rows if r["model"] == (student or {}).get("model")}
    out = []
    for jrd in (r for r in rows if r["method"] == "jointrd" and "Dirac" not in r["model"]):
        name = f"{jrd['model']} jointrd"
        for label, a, b in ((f"{name} - plain CE", jrd, plain.get("ce")),
                            (f"{name} - feature KD", jrd, plain.get("feature-kd")),
                            (f"teacher - {name}", teacher, jrd)):
            if b is None:
                continue
            va, vb = dict(zip(a["seeds"], a["final_top1"])), dict(zip(b["seeds"], b["final_top1"]))
            seeds = [s for s in a["seeds"] if s in vb]
            diffs = [va[s] - vb[s] for s in seeds]
            if not diffs:
                continue
            mean = statistics.fmean(diffs)
            row: dict[str, Any] = {"comparison": label, "seeds": seeds, "differences": diffs,
                                   "mean": mean, "ci95": None}
            if len(diffs) > 1:
                std = statistics.stdev(diffs)
                t = _T975[len(diffs) - 2] if len(diffs) - 1 <= len(_T975) else 1.96
                half = t * std / len(diffs) ** 0.5
                row.update(std=std, ci95=[mean - half, mean + half])
            out.append(row)
    return out


def format_markdown(summary: dict[str, Any]) -> str:
    cfg = summary["config"]
    n = cfg["data"]["limit_train"] or 60000
    lines = [
        f"Fashion-MNIST: first {n} training images, full 10k test set, "
        f"{cfg['train']['epochs']} epochs ({cfg['optim']['schedule']}, LR {cfg['optim']['lr']}, "
        f"batch {cfg['data']['batch_size']}), seeds {summary['seeds']}.",
        "",
        "| network | method | final top-1 (%) mean ± std | per seed | best epoch (%) | "
        "train time (s) |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in summary["rows"]:
        per = ", ".join(f"{v:.2f}" for v in r["final_top1"])
        lines.append(
            f"| {r['model']} | {r['method']} | {r['final_mean']:.2f} ± {r['final_std']:.2f} | "
            f"{per} | {r['best_mean']:.2f} | {r['train_time_s_mean']:.0f} |"
        )
    paired = paired_differences(summary)
    if paired:
        lines += ["", "Paired differences of final top-1 (points), per seed (same teacher and data "
                  "order), mean and 95% t interval:", "",
                  "| comparison | per seed | mean | 95% interval |", "|---|---|---:|---|"]
        for p in paired:
            per = ", ".join(f"{d:+.2f}" for d in p["differences"])
            ci = (f"[{p['ci95'][0]:+.2f}, {p['ci95'][1]:+.2f}]" if p["ci95"] else
                  "one seed: none")
            lines.append(f"| {p['comparison']} | {per} | {p['mean']:+.2f} | {ci} |")
    if summary.get("machine"):
        m = summary["machine"]
        lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']}."]
    if summary.get("command"):
        lines += ["", f"Command: `{summary['command']}`"]
    return "\n".join(lines)


def write_report(summary: dict[str, Any], results_dir: Path) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / "accuracy.json").write_text(json.dumps(summary, indent=2))
    (results_dir / "accuracy.md").write_text(format_markdown(summary) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(9, 4))
    for r in summary["rows"]:
        curves = r["curves"]
        epochs = range(1, len(curves[0]) + 1)
        mean = [statistics.fmean(c[i] for c in curves) for i in range(len(curves[0]))]
        ax.plot(epochs, mean, marker="o", label=f"{r['model']} {r['method']}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("test top-1 (%), mean over seeds")
    ax.set_title("Fashion-MNIST test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8)
    fig.tight_layout()
    fig.savefig(results_dir / "accuracy.png", dpi=120)
    plt.close(fig)
