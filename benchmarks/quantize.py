"""INT8 deployment of the plain student: accuracy and speed against the INT8 ResNet.

Accuracy: the seed-0 ResNet-32 teacher and plain-32 students (CE, feature KD, JointRD with the
paper defaults, JointRD lambda 1e-4) of the Fashion-MNIST accuracy suite, trained with the
suite's exact settings (``resdist.experiments.suites``; finished runs are reused), are exported to fp32
ONNX and quantised with ONNX Runtime's static QDQ tool (per-channel INT8 weights, INT8
activations calibrated with MinMax on 512 training images: the run's first 20k training
images, no augmentation, seeded draw). fp32 and INT8 top-1 are measured with ONNX Runtime on the
full 10k test set, which is used for nothing else.

Latency: ResNet / plain, fp32 and INT8 timed interleaved in one run per pair (ONNX Runtime CPU,
batch 1/8/32, 1 thread and all cores): the trained ResNet-32 and JointRD plain-32 at 1x28x28,
and ResNet-18/34/50 vs plain-18/34/50 (ImageNet stem, 1000 classes) at 3x224x224 with random
weights whose BatchNorm statistics are calibrated on Gaussian images (INT8 calibration on
Gaussian images too).

    python benchmarks/quantize.py                # trains missing runs (~4-8 min each), then
                                                 # about 10-15 min of measuring on 2 cores
    python benchmarks/quantize.py --quick        # a smoke run (needs the trained runs)
    python benchmarks/quantize.py --render-only  # re-render .md/.png from quantize.json

Writes benchmarks/results/quantize.{json,md,png} (``--results`` to change the folder).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from resdist.config import Config
from resdist.data import build_data
from resdist.deploy import calibrate_bn, export, export_onnx, to_deploy
from resdist.deploy.onnx_eval import evaluate_onnx
from resdist.deploy.profile import measure_latency
from resdist.deploy.quantize import calibration_batches, gaussian_batches, quantize_onnx
from resdist.experiments.suites import (
    STUDENT_ROWS,
    Row,
    finished_history,
    run_config,
    run_name,
    suite_settings,
)
from resdist.machine import environment, load_average
from resdist.models import create_model
from resdist.tables import markdown_table

TEACHER = "resnet32"
STUDENT = "plain32"
#: (method, variant) of the suite's student rows measured here.
ROWS = (("ce", ""), ("feature-kd", ""), ("jointrd", ""), ("jointrd", "lambda1e-4"))
JOINTRD = ("jointrd", "")
IMAGENET_PAIRS = (("resnet18", "plain18"), ("resnet34", "plain34"), ("resnet50", "plain50"))
CALIBRATION_IMAGES = 512
SEED = 0
PARTS = ("accuracy", "imagenet")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def suite_runs(root: Path, data_dir: str | None, train_missing: bool) -> list[dict[str, Any]]:
    """The teacher and student runs of the suite (seed 0), trained here if missing."""
    from resdist.engine.trainer import train

    base = Config.from_dict(suite_settings("fashion-mnist"))
    if data_dir:
        base.data.data_dir = data_dir
    base.validate()
    rows = [r for r in STUDENT_ROWS if (r.method, r.variant) in ROWS]
    plan = [(TEACHER, Row("ce"))] + [(STUDENT, r) for r in rows]
    runs = []
    for model, row in plan:
        cfg = run_config(base, model, row, TEACHER, root / f"seed{SEED}")
        cfg.train.seed = SEED
        run_dir = Path(cfg.train.out)
        history = finished_history(run_dir, cfg.train.epochs, cfg.to_dict())
        if history is None:
            if not train_missing:
                raise SystemExit(f"run {run_dir} is not finished; run without --no-train")
            log(f"== training {run_name(model, row)} (seed {SEED}) ==")
            history = train(cfg).history
        label = f"{model} ({row.label})" if row.label else model
        runs.append({"label": label, "model": model, "method": row.method,
                     "variant": row.variant, "run_dir": str(run_dir), "config": cfg,
                     "pytorch_test_top1": history[-1]["test_top1"]})
    return runs


def accuracy(runs: list[dict[str, Any]], onnx_dir: Path) -> list[dict[str, Any]]:
    """fp32 and INT8 top-1 on the full test set for every run; keeps the ONNX files.

    Every run of the suite has the same data settings, so the calibration images (and the
    test set) are read once and shared."""
    data = runs[0]["config"].data
    if any(r["config"].data != data for r in runs):
        raise SystemExit("the runs do not share their data settings")
    batches = calibration_batches(data, CALIBRATION_IMAGES, seed=SEED)
    source = (f"{sum(len(b) for b in batches)} images drawn (seed {SEED}) from the runs' "
              f"training split (first {data.limit_train} images), no augmentation")
    test = build_data(dataclasses.replace(data, limit_test=None, val_split=0.0, batch_size=1),
                      device="cpu").test  # the full test set, preprocessed as in training
    out = []
    for run in runs:
        name = run_name(run["model"], Row(run["method"], run["variant"]))
        fp32, int8 = onnx_dir / f"{name}.onnx", onnx_dir / f"{name}-int8.onnx"
        t0 = time.perf_counter()
        exported = export(Path(run["run_dir"]) / "last.pth", "onnx", fp32)
        report = quantize_onnx(fp32, int8, batches, calibration_source=source)
        m32, m8 = evaluate_onnx(fp32, test), evaluate_onnx(int8, test)
        row = {
            "network": run["label"], "method": run["method"], "run": name,
            "pytorch_test_top1": run["pytorch_test_top1"],
            "fp32_top1": m32["top1"], "int8_top1": m8["top1"],
            "int8_loss_points": m32["top1"] - m8["top1"],
            "fp32_top5": m32["top5"], "int8_top5": m8["top5"], "test_images": m32["samples"],
            "fp32_max_rel_error_vs_pytorch": exported.max_rel_error,
            "quantization": {k: v for k, v in report.as_dict().items()
                             if k not in ("path", "fp32_path")},
            "fp32_onnx": str(fp32), "int8_onnx": str(int8),
        }
        out.append(row)
        log(f"{name}: fp32 {m32['top1']:.2f}%  INT8 {m8['top1']:.2f}%  "
            f"({time.perf_counter() - t0:.0f} s)")
    return out


def _imagenet_onnx(name: str, onnx_dir: Path, calib_images: int) -> tuple[Path, Path, dict]:
    shape = (3, 224, 224)
    model = create_model(name, num_classes=1000, stem="imagenet")
    calibrate_bn(model, 2, shape, 8, seed=SEED)
    fp32 = export_onnx(to_deploy(model), onnx_dir / f"{name}.onnx", shape, deploy=False)
    int8 = onnx_dir / f"{name}-int8.onnx"
    report = quantize_onnx(fp32, int8, gaussian_batches(shape, calib_images, 8, seed=SEED),
                           calibration_source=f"{calib_images} Gaussian images")
    info = {k: v for k, v in report.as_dict().items() if k not in ("path", "fp32_path")}
    return fp32, int8, info


def _time_pair(
    pair: tuple[str, str], files: dict[str, tuple[Path, Path]], shape: tuple[int, ...],
    runs: dict[int, int], max_seconds: float,
) -> list[dict[str, Any]]:
    """fp32 and INT8, ResNet and plain: four sessions timed interleaved, per setting."""
    resnet, plain = pair
    paths = {f"{n} {p}": files[n][i] for n in pair for i, p in enumerate(("fp32", "int8"))}
    records = [{"model": r.model, **r.as_dict()} for r in measure_latency(
        paths, shape, (1, 8, 32), (1, None), runs, warmup=1, min_runs=3,
        max_seconds=max_seconds, seed=SEED, log=log)]
    by = {(r["model"], r["threads"], r["batch"]): r for r in records}
    rows = []
    for t, b in sorted({(r["threads"], r["batch"]) for r in records}):
        ms = {k: by[(k, t, b)]["median_ms"] for k in paths}
        rows.append({
            "pair": f"{resnet} / {plain}", "input": "x".join(map(str, shape)),
            "threads": t, "batch": b,
            "median_ms": ms,
            "runs": {k: by[(k, t, b)]["runs"] for k in paths},
            "ratio_fp32": ms[f"{resnet} fp32"] / ms[f"{plain} fp32"],
            "ratio_int8": ms[f"{resnet} int8"] / ms[f"{plain} int8"],
            "int8_speedup_resnet": ms[f"{resnet} fp32"] / ms[f"{resnet} int8"],
            "int8_speedup_plain": ms[f"{plain} fp32"] / ms[f"{plain} int8"],
        })
    return rows


def thin_latency(acc: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """The trained ResNet-32 teacher and JointRD plain-32 student, fp32 and INT8, 1x28x28."""
    teacher = next(r for r in acc if r["run"] == f"{TEACHER}-ce")
    student = next(r for r in acc if r["run"] == f"{STUDENT}-jointrd")
    files = {TEACHER: (Path(teacher["fp32_onnx"]), Path(teacher["int8_onnx"])),
             STUDENT: (Path(student["fp32_onnx"]), Path(student["int8_onnx"]))}
    runs = {1: 5, 8: 3, 32: 3} if quick else {1: 400, 8: 150, 32: 50}
    limit = 1.0 if quick else 10.0
    log(f"latency {TEACHER} / {STUDENT} (trained, JointRD student), 1x28x28")
    rows = _time_pair((TEACHER, STUDENT), files, (1, 28, 28), runs, limit)
    return {"rows": rows, "runs_per_setting": runs, "max_seconds_per_setting": limit}


def imagenet_latency(onnx_dir: Path, quick: bool) -> dict[str, Any]:
    """ResNet-18/34/50 vs plain-18/34/50 at 3x224x224, random BN-calibrated weights."""
    runs = {1: 3, 8: 3, 32: 3} if quick else {1: 50, 8: 15, 32: 6}
    limit = 1.0 if quick else 30.0
    calib = 8 if quick else 16
    files: dict[str, tuple[Path, Path]] = {}
    quant, rows = {}, []
    for pair in IMAGENET_PAIRS[:1] if quick else IMAGENET_PAIRS:
        for name in pair:
            t0 = time.perf_counter()
            fp32, int8, info = _imagenet_onnx(name, onnx_dir, calib)
            files[name], quant[name] = (fp32, int8), info
            log(f"{name}: exported and quantised in {time.perf_counter() - t0:.0f} s, "
                f"{info['feature_adds']} feature Adds")
        log(f"latency {pair[0]} / {pair[1]} (random weights), 3x224x224")
        rows += _time_pair(pair, files, (3, 224, 224), runs, limit)
        for name in pair:
            for f in files.pop(name):
                f.unlink()
    return {"rows": rows, "runs_per_setting": runs, "max_seconds_per_setting": limit,
            "calibration_images": calib, "quantization": quant}


# --- report ------------------------------------------------------------------------------------

def _latency_table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        resnet, plain = r["pair"].split(" / ")
        ms = ", ".join(f"{r['median_ms'][f'{n} {p}']:.2f}" for p in ("fp32", "int8")
                       for n in (resnet, plain))
        cells.append([f"{r['pair']}, {r['input']}", r["threads"], r["batch"],
                      f"{r['ratio_fp32']:.2f}", f"{r['ratio_int8']:.2f}",
                      f"{r['int8_speedup_resnet']:.2f}", f"{r['int8_speedup_plain']:.2f}", ms,
                      min(r["runs"].values())])
    return markdown_table(
        ["pair, input", "threads", "batch", "ResNet / plain fp32", "ResNet / plain INT8",
         "INT8 speed-up ResNet", "INT8 speed-up plain",
         "ms: ResNet fp32, plain fp32, ResNet INT8, plain INT8", "runs"], cells)


def format_markdown(result: dict[str, Any]) -> str:
    meta, parts = result["meta"], result["parts"]
    first = next(iter(parts.values()))
    lines = [
        "# INT8 deployment: plain students vs the INT8 ResNet", "",
        f"- CPU: {first['cpu']} ({first['cores']} cores); onnxruntime {first['onnxruntime']}, "
        f"torch {first['torch']}, Python {first['python']}",
        f"- Quantisation: {meta['quantization']}",
        "- The machine was shared with other jobs (load averages below), so latencies are "
        "noisy: each pair's four models (ResNet and plain, fp32 and INT8) were timed "
        "interleaved run by run, and medians are reported.",
    ]
    for name, m in parts.items():
        lines.append(
            f"- Part `{name}`: `{m['command']}` on {m['date']}, {m['wall_seconds']} s "
            f"(training excluded), load average {m['loadavg_start']} -> {m['loadavg_end']}"
        )
    if "accuracy" in result:
        suite = result["meta"]["suite"]
        lines += [
            "", "## Accuracy: Fashion-MNIST, full 10k test set (seed 0)", "",
            f"The accuracy suite's settings (first {suite['data']['limit_train']} training "
            f"images, {suite['train']['epochs']} epochs, one-cycle LR 0.1, batch 128, seed 0), "
            "trained on this machine; calibration on 512 of those "
            "training images (no augmentation). Test top-1 with ONNX Runtime; the PyTorch "
            "figure of the same checkpoint is shown for reference.", "",
            markdown_table(
                ["network", "method", "PyTorch top-1 (%)", "fp32 ONNX top-1 (%)",
                 "INT8 top-1 (%)", "INT8 loss (points)", "shortcut Adds (INT8 graph)",
                 "Q/DQ pairs (act.)", "file fp32 / INT8"],
                [[r["network"], r["method"], f"{r['pytorch_test_top1']:.2f}",
                  f"{r['fp32_top1']:.2f}", f"{r['int8_top1']:.2f}",
                  f"{r['int8_loss_points']:+.2f}", r["quantization"]["feature_adds"],
                  r["quantization"]["activation_qdq_pairs"],
                  f"{r['quantization']['fp32_bytes'] / 2**10:.0f} / "
                  f"{r['quantization']['int8_bytes'] / 2**10:.0f} KiB"]
                 for r in result["accuracy"]]),
        ]
        lines += ["", "INT8 loss = fp32 top-1 minus INT8 top-1 (positive: INT8 is worse)."]
    lines += ["", "## Latency: ResNet / plain in fp32 and in INT8 (ONNX Runtime, CPU)", "",
              "Ratios above 1: the plain network is faster; INT8 speed-up = fp32 / INT8. "
              "Medians in ms per batch; runs = the fewest any of the four models got."]
    if "thin_latency" in result:
        t = result["thin_latency"]
        lines += ["", f"Thin nets (trained ResNet-32 and JointRD plain-32, INT8 calibrated on "
                  f"training images); up to {t['runs_per_setting']} runs per batch size, "
                  f"stopping after {t['max_seconds_per_setting']} s once each model has 3.", "",
                  _latency_table(t["rows"])]
    if "imagenet_latency" in result:
        t = result["imagenet_latency"]
        lines += ["", "ImageNet-width nets (ImageNet stem, 1000 classes), random weights with "
                  "BatchNorm statistics calibrated on Gaussian images, INT8 calibrated on "
                  f"{t['calibration_images']} Gaussian images; up to "
                  f"{t['runs_per_setting']} runs per batch size, stopping after "
                  f"{t['max_seconds_per_setting']} s once each model has 3 (the runs column "
                  "gives the count; ResNet-50 at batch 32 has the fewest).", "",
                  _latency_table(t["rows"])]
    lines += ["", "![accuracy and latency](quantize.png)", ""]
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    acc = result.get("accuracy", [])
    rows = [r for k in ("thin_latency", "imagenet_latency") for r in result.get(k, {}).get(
        "rows", [])]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), gridspec_kw={"width_ratios": [1, 1.6]})
    ax = axes[0]
    if acc:
        x = np.arange(len(acc))
        ax.bar(x - 0.2, [r["fp32_top1"] for r in acc], 0.4, label="fp32")
        ax.bar(x + 0.2, [r["int8_top1"] for r in acc], 0.4, label="INT8")
        ax.set_xticks(x, [r["run"].replace("-", "\n", 1) for r in acc], fontsize=7)
        lo = min(min(r["int8_top1"], r["fp32_top1"]) for r in acc)
        ax.set_ylim(lo - 2, max(r["fp32_top1"] for r in acc) + 1)
        ax.legend(fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("Fashion-MNIST, full test set, seed 0", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax = axes[1]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["ratio_fp32"] for r in rows], 0.4, label="fp32")
    ax.bar(x + 0.2, [r["ratio_int8"] for r in rows], 0.4, label="INT8")
    ax.axhline(1.0, color="k", lw=0.8)
    if rows:
        ax.set_ylim(0.8, max(max(r["ratio_fp32"], r["ratio_int8"]) for r in rows) + 0.1)
    ax.set_xticks(x, [f"{r['pair'].split(' / ')[1]} t{r['threads']} b{r['batch']}"
                      for r in rows], rotation=70, ha="right", fontsize=6)
    ax.set_ylabel("latency ResNet / plain")
    ax.set_title("ONNX Runtime CPU latency ratio (above 1: plain faster)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(result: dict[str, Any], out: Path) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantize.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    md = format_markdown(result)
    (out / "quantize.md").write_text(md)
    plot(result, out / "quantize.png")
    return md


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="runs/quantize",
                        help="root of the suite's run directories (seed0/<run> inside); "
                        "runs/reproduce reuses the accuracy suite's runs")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder")
    parser.add_argument("--results", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--only", choices=PARTS, default=None,
                        help="measure one part (accuracy: accuracy and the thin nets' latency; "
                        "imagenet: ResNet-18/34/50 latency) and keep the other part of an "
                        "existing quantize.json")
    parser.add_argument("--no-train", action="store_true", help="fail instead of training")
    parser.add_argument("--quick", action="store_true", help="few timing runs (smoke test)")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render quantize.md/.png from quantize.json")
    args = parser.parse_args(argv)
    out = Path(args.results)
    previous = out / "quantize.json"
    if args.render_only:
        print(write_report(json.loads(previous.read_text()), out))
        return 0
    result: dict[str, Any] = {"meta": {}, "parts": {}}
    if args.only and previous.exists():
        result = json.loads(previous.read_text())
    command = shlex.join(["python", "benchmarks/quantize.py", *(argv or sys.argv[1:])])
    for part in [args.only] if args.only else PARTS:
        if part == "accuracy":
            runs = suite_runs(Path(args.runs), args.data_dir, not args.no_train)
        meta = {**environment(), "date": dt.datetime.now().astimezone().isoformat(
            timespec="seconds")}
        start = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="resdist-quantize-") as tmp:
            if part == "accuracy":
                acc = accuracy(runs, Path(tmp))
                result["thin_latency"] = thin_latency(acc, args.quick)
                for r in acc:
                    r.pop("fp32_onnx"), r.pop("int8_onnx")
                result["accuracy"] = acc
            else:
                result["imagenet_latency"] = imagenet_latency(Path(tmp), args.quick)
        meta.update({"command": command, "wall_seconds": round(time.perf_counter() - start, 1),
                     "loadavg_end": load_average()})
        result["parts"][part] = meta
    result["meta"] = {
        "quantization": "onnxruntime.quantization: quant_pre_process, then quantize_static "
                        "(QDQ, per-channel QInt8 weights, QUInt8 activations, MinMax "
                        f"calibration; {CALIBRATION_IMAGES} training images for the trained "
                        "nets)",
        "seed": SEED,
        "suite": suite_settings("fashion-mnist"),
    }
    print(write_report(result, out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
