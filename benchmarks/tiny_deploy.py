"""Every trained model of the MLPerf Tiny suite in INT8: accuracy, memory, latency, and the
benchmark's 85% target.

For each run the suite has recorded with its weights (``resdist reproduce tiny``; every run of
that suite keeps them beside its record), on the full CIFAR-10 test set (JPEG copy):

- fp32 top-1 of the folded network in ONNX Runtime (the record's PyTorch figure beside it);
- INT8 top-1 through ONNX Runtime's static quantiser (QDQ, per-channel weights; with 8-bit and
  with 7-bit weights, ``reduce_range``, which x86 CPUs without VNNI need) and through LiteRT's
  own (the ``.tflite`` a microcontroller toolchain takes), all calibrated on 512 training
  images (seed 0) prepared as the input contract says;
- peak activation memory of the INT8 model: resdist's liveness figure (the exported graph's,
  at one byte per activation) and TFLite Micro's smallest tensor arena for the INT8 ``.tflite``
  (``resdist[tflm]``; the interpreter's own bookkeeping included);
- latency per image of the INT8 ONNX model in ONNX Runtime, 1 thread, batch 1 (median of
  ``--runs`` after warm-up), on this CPU;
- whether fp32 and INT8 meet the benchmark's 85% top-1.

    python benchmarks/tiny_deploy.py --data-dir DIR            # every recorded run not yet measured
    python benchmarks/tiny_deploy.py --render-only

Writes benchmarks/results/tiny_deploy.{json,md}; a run already measured is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from resdist.atomic import write_text_atomic
from resdist.deploy import export
from resdist.deploy.onnx_eval import evaluate_export_file
from resdist.deploy.profile.liveness import analyze_onnx
from resdist.deploy.quantize import export_int8, quantize_checkpoint
from resdist.experiments.records import RunStore
from resdist.machine import fingerprint, fingerprint_name, x86_without_vnni
from resdist.tables import markdown_table

SUITE = "tiny"
TARGET = 85.0
CALIBRATION_IMAGES = 512


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ort_latency_ms(path: Path, runs: int) -> float:
    """Median latency of one image in ONNX Runtime, 1 thread, after 5 warm-up runs."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal((1, *inp.shape[1:])).astype(np.float32)
    for _ in range(5):
        session.run(None, {inp.name: x})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {inp.name: x})
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def measure(seed: int, run: str, record: dict[str, Any], weights: Path,
            args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """Every figure of one trained run."""
    t0 = time.perf_counter()
    stem = tmp / f"seed{seed}-{run}"
    fp32 = export(str(weights), "onnx", f"{stem}.onnx")
    live = analyze_onnx(fp32.path).peak_activation_bytes
    quantize_checkpoint(str(weights), f"{stem}-int8.onnx", data_dir=args.data_dir,
                        calibration_images=CALIBRATION_IMAGES)
    quantize_checkpoint(str(weights), f"{stem}-int8-7bit.onnx", data_dir=args.data_dir,
                        calibration_images=CALIBRATION_IMAGES, reduce_range=True)
    tflite = export_int8(str(weights), "tflite", f"{stem}-int8.tflite", data_dir=args.data_dir,
                         calibration_images=CALIBRATION_IMAGES)

    scored: dict[str, int] = {}

    def top1(path: str) -> float:
        metrics = evaluate_export_file(path, data_dir=args.data_dir)
        scored[path] = metrics["samples"]
        return metrics["top1"]

    entry: dict[str, Any] = {
        "seed": seed, "run": run, "record_top1": record["final_top1"],
        "fp32_top1": top1(f"{stem}.onnx"), "onnx_int8_top1": top1(f"{stem}-int8.onnx"),
        "onnx_int8_7bit_top1": top1(f"{stem}-int8-7bit.onnx"),
        "litert_int8_top1": top1(f"{stem}-int8.tflite"),
        "feature_adds": fp32.feature_adds, "parameters": fp32.parameters,
        "liveness_fp32_bytes": live, "liveness_int8_bytes": live // 4,
        "onnx_int8_latency_ms": ort_latency_ms(Path(f"{stem}-int8.onnx"), args.runs),
        "litert_int8_agreement": tflite.extra.get("int8_agreement"),
        "tflite_bytes": Path(f"{stem}-int8.tflite").stat().st_size,
        "machine": fingerprint("cpu"), "x86_without_vnni": x86_without_vnni(),
        "test_images": min(scored.values()),
    }
    try:
        from resdist.deploy.formats.tflm import tflm_arena

        arena = tflm_arena(f"{stem}-int8.tflite")
        entry["tflm_arena_bytes"], entry["tflm_version"] = arena.arena_bytes, arena.version
    except Exception as e:  # reported, not hidden: the table says why there is no figure
        entry["tflm_arena_bytes"], entry["tflm_error"] = None, str(e).splitlines()[0]
    log(f"seed {seed} {run}: fp32 {entry['fp32_top1']:.2f}%  INT8 ONNX "
        f"{entry['onnx_int8_top1']:.2f}% (7-bit {entry['onnx_int8_7bit_top1']:.2f}%) LiteRT {entry['litert_int8_top1']:.2f}%  arena "
        f"{entry['tflm_arena_bytes']}  ({time.perf_counter() - t0:.0f} s)")
    return entry


def format_markdown(result: dict[str, Any]) -> str:
    images = sorted({e["test_images"] for e in result["runs"]})
    lines = [f"# MLPerf Tiny suite in INT8 ({result['date']})", "",
             f"CIFAR-10 test set ({', '.join(map(str, images))} images). INT8: ONNX Runtime "
             "static QDQ "
             "(per-channel 8-bit weights, and 7-bit with reduce_range) and LiteRT's quantiser, "
             "each calibrated on "
             f"{CALIBRATION_IMAGES} training images (seed 0). Memory at batch 1: resdist's "
             "liveness peak of the exported graph at one byte per activation, and the smallest "
             "tensor arena TFLite Micro runs the INT8 .tflite in. Latency: INT8 ONNX, ONNX "
             f"Runtime, 1 thread, batch 1, median. Target: {TARGET:.0f}% top-1.", ""]
    rows = []
    for e in sorted(result["runs"], key=lambda e: (e["run"], e["seed"])):
        meets = ("yes" if e["fp32_top1"] >= TARGET else "no") + " / " + \
                ("yes" if e["litert_int8_top1"] >= TARGET else "no")
        seven = f"{e['onnx_int8_7bit_top1']:.2f}" if "onnx_int8_7bit_top1" in e else "-"
        arena = f"{e['tflm_arena_bytes']:,}" if e.get("tflm_arena_bytes") else \
            f"- ({e.get('tflm_error', 'not measured')})"
        rows.append([e["run"], str(e["seed"]), f"{e['record_top1']:.2f}",
                     f"{e['fp32_top1']:.2f}", f"{e['onnx_int8_top1']:.2f}", seven,
                     f"{e['litert_int8_top1']:.2f}", str(e["feature_adds"]),
                     f"{e['liveness_int8_bytes']:,}", arena,
                     f"{e['onnx_int8_latency_ms']:.3f}", meets])
    lines.append(markdown_table(
        ["run", "seed", "record fp32 (%)", "ONNX fp32 (%)", "ONNX INT8 (%)",
         "ONNX INT8 7-bit (%)", "LiteRT INT8 (%)",
         "shortcut Adds", "INT8 liveness peak (B)", "TFLite Micro arena (B)",
         "INT8 ms/image", "85%: fp32 / INT8"], rows))
    machines = sorted({fingerprint_name(e["machine"]) + (
        "; no VNNI" if e.get("x86_without_vnni") else "") for e in result["runs"]})
    lines += ["", "85%: met by fp32 / by the INT8 .tflite (the file TFLite Micro runs; no "
              "INT8 variant is chosen on the test set).", "",
              f"Machine(s): {'; '.join(machines)}.", "",
              f"Command: `{result.get('command', '')}`"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    p.add_argument("--results", default=str(Path(__file__).parent / "results"),
                   help="the folder holding runs/tiny/ (the suite's records) and the report")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--runs", type=int, default=200, help="timed runs per latency figure")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    results = Path(args.results)
    path = results / "tiny_deploy.json"
    result = json.loads(path.read_text()) if path.exists() else {"runs": []}
    result["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    if not args.render_only:
        result["command"] = shlex.join(["python", "benchmarks/tiny_deploy.py",
                                        *(argv or sys.argv[1:])])
        store = RunStore(results, SUITE)
        done = {(e["seed"], e["run"]) for e in result["runs"]}
        with tempfile.TemporaryDirectory(prefix="tiny-deploy-") as tmp:
            for seed in args.seeds:
                folder = store.dir / f"seed{seed}"
                for record_path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
                    run = record_path.stem
                    weights = store.weights_path(seed, run)
                    if (seed, run) in done or not weights.exists():
                        continue
                    record = json.loads(record_path.read_text())
                    result["runs"].append(measure(seed, run, record, weights, args, Path(tmp)))
                    write(result, results)
    write(result, results)
    print(format_markdown(result))
    return 0


def write(result: dict[str, Any], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results / "tiny_deploy.json", json.dumps(result, indent=1) + "\n")
    write_text_atomic(results / "tiny_deploy.md", format_markdown(result))


if __name__ == "__main__":
    raise SystemExit(main())
