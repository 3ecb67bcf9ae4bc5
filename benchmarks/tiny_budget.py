"""The training budget of the MLPerf Tiny suite, chosen on a validation split, and the suite's
size from measured rates.

Budget: ResNet-8 (the benchmark's model) is trained with cross-entropy on the ``tiny-suite``
preset at several epoch budgets (one-cycle, so each budget is its own run), 5,000 training
images held out (stratified, seeded) as the validation split; only the validation top-1 is read.
The rule, fixed before the runs: the budget is the smallest one whose final validation top-1 is
within ``--flat`` points (1.0) of the next, doubled budget's: the curve has flattened there.

Rates: each run of the suite (ResNet-8 and ResNet-20 with CE, plain-8 with CE and JointRD,
plain-20 with JointRD) trains two short epochs of ``--rate-images`` images through the suite's
own code path; the training throughput of the second (the first warms up) gives the time one
epoch of 50,000 images takes on this machine, and the suite's hours per budget (3 seeds)
follow (the per-epoch test evaluation, a few seconds, is left out).

    python benchmarks/tiny_budget.py --data-dir DIR                 # budgets 5 10 20 40, rates
    python benchmarks/tiny_budget.py --data-dir DIR --part rates    # the rates only
    python benchmarks/tiny_budget.py --render-only

Finished budgets are kept in the JSON and not trained again (the runs can be spread over
sessions). Writes benchmarks/results/tiny_budget.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any

from resdist.atomic import atomic_path, write_text_atomic
from resdist.config import Config
from resdist.engine.trainer import train
from resdist.experiments.suites import SUITES, Row, run_config, run_name, suite_settings
from resdist.machine import fingerprint, fingerprint_name, load_average
from resdist.models import teacher_name_for
from resdist.tables import markdown_table

SUITE = "tiny"
MODEL = "resnet8"
VAL_IMAGES = 5000
TRAIN_IMAGES, TEST_IMAGES = 50000, 10000
TARGET = 85.0  # MLPerf Tiny's quality target for image classification (top-1, %)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def base_config(data_dir: str | None) -> Config:
    base = Config.from_dict(suite_settings(SUITE))
    base.data.data_dir = data_dir
    return base.validate()


def budget_run(args: argparse.Namespace, epochs: int) -> dict[str, Any]:
    """Train ResNet-8 with CE for ``epochs`` on the training set less the validation split."""
    cfg = run_config(base_config(args.data_dir), MODEL, Row("ce"), MODEL,
                     Path(args.runs) / f"budget{epochs}")
    cfg.train.epochs, cfg.train.seed = epochs, args.seed
    cfg.data.val_split = VAL_IMAGES
    log(f"== {MODEL} ce, {epochs} epochs, validation split of {VAL_IMAGES} ==")
    history = train(cfg.validate()).history
    return {"epochs": epochs, "seed": args.seed, "val_curve": [r["val_top1"] for r in history],
            "final_val_top1": history[-1]["val_top1"],
            "epoch_time_s": [r["epoch_time_s"] for r in history],
            "machine": fingerprint("cpu")}


def suite_plan() -> list[tuple[str, Row]]:
    """The suite's runs in training order: the teachers, then the student rows."""
    base = base_config(None)
    students = [(row.model or base.model.name, row) for row in SUITES[SUITE].rows]
    teachers = list(dict.fromkeys(teacher_name_for(m) for m, _ in students))
    return [(t, Row("ce")) for t in teachers] + students


def rates_part(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Seconds per epoch of every run of the suite, from a short real training of each."""
    base = base_config(args.data_dir)
    rows = []
    load_start = load_average()
    with tempfile.TemporaryDirectory(prefix="tiny-rates-") as tmp:
        for model, row in suite_plan():
            cfg = run_config(base, model, row, teacher_name_for(model), Path(tmp))
            cfg.train.epochs, cfg.data.limit_train = 2, args.rate_images
            cfg.train.resume = False
            log(f"== rate: {run_name(model, row)}, 2 epochs of {args.rate_images} images ==")
            warm = train(cfg.validate()).history[-1]
            rows.append({"run": run_name(model, row), "images_per_s": warm["images_per_s"],
                         "epoch_s": TRAIN_IMAGES / warm["images_per_s"]})
    result["rates"] = {"rows": rows, "images": args.rate_images, "machine": fingerprint("cpu"),
                       "loadavg_start": load_start, "loadavg_end": load_average()}


def choose(budgets: list[dict[str, Any]], flat: float) -> dict[str, Any] | None:
    """The smallest budget within ``flat`` points of the doubled budget's final val top-1."""
    by_epochs = {b["epochs"]: b for b in budgets}
    for e in sorted(by_epochs):
        doubled = by_epochs.get(2 * e)
        if doubled and doubled["final_val_top1"] - by_epochs[e]["final_val_top1"] < flat:
            return by_epochs[e]
    return None


def suite_hours(result: dict[str, Any], epochs: int, seeds: int = 3) -> float | None:
    rates = result.get("rates")
    if not rates:
        return None
    return seeds * epochs * sum(r["epoch_s"] for r in rates["rows"]) / 3600


def format_markdown(result: dict[str, Any]) -> str:
    budgets = sorted(result.get("budgets", []), key=lambda b: b["epochs"])
    lines = [f"# MLPerf Tiny suite: training budget on a validation split ({result['date']})", ""]
    if budgets:
        lines += [f"ResNet-8, cross-entropy, `tiny-suite` preset (one-cycle, batch 128), "
                  f"{TRAIN_IMAGES - VAL_IMAGES} training images, {VAL_IMAGES} held out as the "
                  f"validation split (stratified, seeded); seed {budgets[0]['seed']}. Only the "
                  "validation split was read; the test set was not used.", ""]
        rows = []
        for b in budgets:
            nxt = next((c for c in budgets if c["epochs"] == 2 * b["epochs"]), None)
            gain = f"{nxt['final_val_top1'] - b['final_val_top1']:+.2f}" if nxt else "-"
            hours = suite_hours(result, b["epochs"])
            rows.append([str(b["epochs"]), f"{b['final_val_top1']:.2f}", gain,
                         f"{sum(b['epoch_time_s']) / len(b['epoch_time_s']):.1f}",
                         f"{hours:.1f}" if hours is not None else "-",
                         fingerprint_name(b["machine"])])
        lines.append(markdown_table(["epochs", "final val top-1 (%)", "gain when doubled",
                                     "s per epoch", "suite hours (3 seeds)", "machine"], rows))
        chosen = choose(budgets, result["flat"])
        lines.append("")
        if chosen:
            lines.append(f"Rule (fixed before the runs): the smallest budget within "
                         f"{result['flat']} point(s) of the doubled budget. Chosen: "
                         f"**{chosen['epochs']} epochs**.")
        else:
            lines.append(f"Rule (fixed before the runs): the smallest budget within "
                         f"{result['flat']} point(s) of the doubled budget. No measured budget "
                         "meets it yet: the curve is still rising.")
    rates = result.get("rates")
    if rates:
        lines += ["", f"Rates: each run of the suite trained two epochs of {rates['images']} "
                  "images through the suite's own code; the second epoch's throughput is "
                  f"below, on {fingerprint_name(rates['machine'])} (load average "
                  f"{rates['loadavg_start']} at start, {rates['loadavg_end']} at end). One "
                  f"epoch = {TRAIN_IMAGES} images, test evaluation left out.", ""]
        lines.append(markdown_table(
            ["run", "training images/s", "one epoch (s)"],
            [[r["run"], f"{r['images_per_s']:.0f}", f"{r['epoch_s']:.0f}"]
             for r in rates["rows"]]))
        lines += ["", f"One seed of the suite: {sum(r['epoch_s'] for r in rates['rows']):.0f} s "
                  "per epoch of budget."]
    for key in ("budget_command", "rates_command"):
        if result.get(key):
            lines += ["", f"Command: `{result[key]}`"]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """Validation curves per budget, and final validation top-1 against the budget."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    budgets = sorted(result.get("budgets", []), key=lambda b: b["epochs"])
    if not budgets:
        return
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for run in budgets:
        a.plot(range(1, run["epochs"] + 1), run["val_curve"], label=f"{run['epochs']} epochs")
    a.axhline(TARGET, color="grey", ls="--", lw=1, label="MLPerf Tiny target (85%)")
    a.set(xlabel="epoch", ylabel="validation top-1 (%)", title="ResNet-8 CE, one run per budget")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.plot([r["epochs"] for r in budgets], [r["final_val_top1"] for r in budgets], marker="o")
    b.axhline(TARGET, color="grey", ls="--", lw=1)
    b.set(xscale="log", xlabel="budget (epochs)", ylabel="final validation top-1 (%)",
          title="final validation top-1 against budget")
    b.set_xticks([r["epochs"] for r in budgets], [str(r["epochs"]) for r in budgets])
    b.minorticks_off()  # the log axis' own minor labels would clash with the budgets
    b.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def write(result: dict[str, Any], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results / "tiny_budget.json", json.dumps(result, indent=1) + "\n")
    write_text_atomic(results / "tiny_budget.md", format_markdown(result))
    plot(result, results / "tiny_budget.png")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    p.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--flat", type=float, default=1.0,
                   help="points of validation top-1 a doubled budget may add at most")
    p.add_argument("--rate-images", type=int, default=5120)
    p.add_argument("--runs", default="runs/tiny-budget", help="the budget runs' folders")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"))
    p.add_argument("--part", choices=("budget", "rates", "all"), default="all")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    results = Path(args.results)
    path = results / "tiny_budget.json"
    result = json.loads(path.read_text()) if path.exists() else {"budgets": []}
    result["flat"] = args.flat
    result["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    command = shlex.join(["python", "benchmarks/tiny_budget.py", *(argv or sys.argv[1:])])
    if not args.render_only:
        if args.part in ("rates", "all"):
            result["rates_command"] = command
            rates_part(result, args)
            write(result, results)
        if args.part in ("budget", "all"):
            result["budget_command"] = command
            done = {b["epochs"] for b in result["budgets"] if b["seed"] == args.seed}
            for epochs in args.budgets:
                if epochs in done:
                    log(f"{epochs} epochs: kept from {path}")
                    continue
                result["budgets"].append(budget_run(args, epochs))
                write(result, results)
    write(result, results)
    print(format_markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
