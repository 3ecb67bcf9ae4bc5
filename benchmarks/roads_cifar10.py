"""Every road to a shortcut-free network on the CIFAR-10 suite: INT8 accuracy per row, training
cost per step against CE, and whether the deployed graph is the plain student's.

INT8: every row of ``resdist reproduce cifar10`` (ResNet-20 teacher; plain-20 with CE, KD,
feature KD, JointRD; the RepVGG-style plain-20 with CE and JointRD) is folded, exported to fp32
ONNX and quantised with ONNX Runtime's static QDQ tool (per-channel INT8 weights, INT8
activations calibrated with MinMax on 512 training images drawn with seed 0, no augmentation);
fp32 and INT8 top-1 are measured with ONNX Runtime on the full 10k test set, which is used for
nothing else. ``--part executorch`` then quantises each measured checkpoint with ExecuTorch's
PT2E XNNPACK quantiser (same calibration images) and scores the ``.pte`` in ExecuTorch. The checkpoint of a row is, in this order:

- the teacher: the weights the suite's records keep (``runs/cifar10/seedS/resnet20-ce.pth``);
- the recorded run itself, when its folder is at hand (``--runs``, the ``--out`` folder of
  ``resdist reproduce``) with the record's settings and final accuracy;
- a retrained run (``--retrained DIR``: ``DIR/seedS/RUN/last.pth``), trained with the record's
  exact settings and seed (``resdist train --preset cifar10-suite --method M --seed S``; the
  suite's records keep no student weights). Its fp32 accuracy is reported beside the record's:
  the same seed on another machine or thread count gives a nearby, not an identical, run.

Speed: one optimiser step of every row's objective on the suite's network and batch (plain-20
and ResNet-20, 3x32x32, batch 128, channels_last as the preset), steps interleaved so a shared
machine slows all alike; median and fastest step per objective, relative to plain CE.

    python benchmarks/roads_cifar10.py --data-dir DIR --runs runs/reproduce --retrained DIR2
    python benchmarks/roads_cifar10.py --part speed            # the step timing only
    python benchmarks/roads_cifar10.py --render-only           # re-render the .md

Measurements already in the JSON are kept (a row is measured once per checkpoint); the script
can be run again as more runs finish. Writes benchmarks/results/roads_cifar10.{json,md}.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from resdist.config import Config, settings
from resdist.data import build_data
from resdist.deploy import export
from resdist.deploy.onnx_eval import evaluate_onnx
from resdist.deploy.quantize import calibration_batches, quantize_onnx
from resdist.engine import build_optimizer
from resdist.engine.build import build_objective, model_kwargs
from resdist.engine.trainer import accumulation_step, amp_setup
from resdist.experiments.records import RecordError, RunStore
from resdist.experiments.suites import CIFAR10_ROWS, Row, run_config, run_name, suite_settings
from resdist.machine import fingerprint, fingerprint_name, load_average
from resdist.models import calibrate_bn, create_model
from resdist.models.memory_format import to_channels_last
from resdist.tables import markdown_table

SUITE = "cifar10"
TEACHER, STUDENT = "resnet20", "plain20"
CALIBRATION_IMAGES = 512
SEED = 0
ROWS: tuple[tuple[str, Row], ...] = ((TEACHER, Row("ce")),) + tuple((STUDENT, r) for r in CIFAR10_ROWS)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def label(model: str, row: Row) -> str:
    return f"{model} ({row.label})" if row.label else model


def base_config(data_dir: str | None) -> Config:
    base = Config.from_dict(suite_settings(SUITE))
    base.data.data_dir = data_dir
    return base.validate()


def _finished_final(run_dir: Path, epochs: int) -> tuple[float, dict] | None:
    """``(final test top-1, settings)`` of a finished run folder, or None."""
    metrics, config = run_dir / "metrics.jsonl", run_dir / "config.yaml"
    if not (metrics.exists() and config.exists() and (run_dir / "last.pth").exists()):
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    if not rows or rows[-1].get("epoch") != epochs:
        return None
    return rows[-1]["test_top1"], settings(Config.from_yaml(config).to_dict())


def find_checkpoint(store: RunStore, base: Config, seed: int, model: str, row: Row,
                    runs: Path | None, retrained: Path | None) -> dict[str, Any] | None:
    """Where the weights of one row of one seed come from, or None when none are at hand."""
    name = run_name(model, row)
    cfg = run_config(base, model, row, TEACHER, Path("unused"))
    cfg.train.seed = seed
    try:
        record = store.load(seed, name, cfg.to_dict())
    except RecordError as e:
        log(f"seed {seed} {name}: {e}")
        return None
    if record is None:
        return None
    found = {"seed": seed, "run": name, "network": label(model, row), "method": row.method,
             "record_top1": record["final_top1"]}
    if name == run_name(TEACHER, Row("ce")):
        return {**found, "checkpoint": str(store.weights_path(seed, name)),
                "source": "recorded run (weights kept with the records)",
                "checkpoint_top1": record["final_top1"]}
    want = settings(cfg.to_dict())
    for root, source in ((runs and runs / SUITE / f"seed{seed}" / name, "recorded run"),
                         (retrained and retrained / f"seed{seed}" / name,
                          "retrained: record's settings and seed")):
        if root is None:
            continue
        done = _finished_final(root, cfg.train.epochs)
        if done is None or done[1] != want:
            continue
        if source == "recorded run" and done[0] != record["final_top1"]:
            continue  # a folder of another run with these settings
        return {**found, "checkpoint": str(root / "last.pth"), "source": source,
                "checkpoint_top1": done[0]}
    return None


def graph_signature(path: Path) -> dict[str, Any]:
    """What the deployed graph computes with: its operators in order, its weight shapes."""
    import onnx

    proto = onnx.load(str(path))
    return {"ops": [n.op_type for n in proto.graph.node],
            "weights": sorted(list(t.dims) for t in proto.graph.initializer)}


def measure_int8(entry: dict[str, Any], batches: list, test, onnx_dir: Path) -> dict[str, Any]:
    """fp32 and INT8 top-1 of one checkpoint on the full test set."""
    stem = f"seed{entry['seed']}-{entry['run']}"
    fp32, int8 = onnx_dir / f"{stem}.onnx", onnx_dir / f"{stem}-int8.onnx"
    t0 = time.perf_counter()
    exported = export(entry["checkpoint"], "onnx", fp32)
    report = quantize_onnx(fp32, int8, batches,
                           calibration_source=f"{CALIBRATION_IMAGES} training images, seed {SEED}")
    m32, m8 = evaluate_onnx(fp32, test), evaluate_onnx(int8, test)
    # per-tensor weight scales (what some NPUs require): where folded branches hurt most
    tensor = onnx_dir / f"{stem}-int8-per-tensor.onnx"
    quantize_onnx(fp32, tensor, batches, per_channel=False,
                  calibration_source=f"{CALIBRATION_IMAGES} training images, seed {SEED}")
    m8t = evaluate_onnx(tensor, test)
    sig = graph_signature(fp32)
    log(f"seed {entry['seed']} {entry['run']}: fp32 {m32['top1']:.2f}%  INT8 {m8['top1']:.2f}%  "
        f"(per-tensor {m8t['top1']:.2f}%; {time.perf_counter() - t0:.0f} s)")
    return {**entry, "fp32_top1": m32["top1"], "int8_top1": m8["top1"],
            "int8_drop_points": m32["top1"] - m8["top1"],
            "int8_per_tensor_top1": m8t["top1"],
            "int8_per_tensor_drop_points": m32["top1"] - m8t["top1"],
            "test_images": m32["samples"],
            "feature_adds": exported.feature_adds, "deployed_parameters": exported.parameters,
            "fp32_max_rel_error_vs_pytorch": exported.max_rel_error, "graph": sig,
            "quantization": {k: v for k, v in report.as_dict().items()
                             if k not in ("path", "fp32_path")}}


def measure_executorch(entry: dict[str, Any], batches: list, test, out_dir: Path
                       ) -> dict[str, Any]:
    """INT8 top-1 of one checkpoint through ExecuTorch: PT2E with the XNNPACK quantiser,
    calibrated on the same images as ONNX Runtime's, run by the XNNPACK delegate, batch 1."""
    import numpy as np

    from resdist.deploy.formats import get_format
    from resdist.deploy.onnx_eval import score_batches

    path = out_dir / f"seed{entry['seed']}-{entry['run']}-int8.pte"
    t0 = time.perf_counter()
    written = export(entry["checkpoint"], "executorch", path, quantize="int8",
                     calibration=lambda: iter(batches),
                     check_images=np.concatenate(batches)[:256])
    run = get_format("executorch").load_runner(path, threads=1)
    m8 = score_batches(run, test, num_classes=10, source=str(path))
    log(f"seed {entry['seed']} {entry['run']}: ExecuTorch XNNPACK INT8 {m8['top1']:.2f}% "
        f"({time.perf_counter() - t0:.0f} s)")
    return {"et_int8_top1": m8["top1"], "et_int8_drop_points": entry["fp32_top1"] - m8["top1"],
            "et_feature_adds": written.feature_adds,
            "et_int8_agreement": (written.extra or {}).get("int8_agreement")}


def executorch_part(result: dict[str, Any], args: argparse.Namespace) -> None:
    """ExecuTorch XNNPACK INT8 for every row already measured in ONNX Runtime."""
    todo = [e for e in result["int8"] if "et_int8_top1" not in e]
    log(f"ExecuTorch INT8: {len(todo)} checkpoints to measure")
    if not todo:
        return
    data = base_config(args.data_dir).data
    batches = calibration_batches(data, CALIBRATION_IMAGES, seed=SEED)
    test = build_data(dataclasses.replace(data, limit_test=None, val_split=0.0, batch_size=1),
                      device="cpu").test
    with tempfile.TemporaryDirectory(prefix="roads-et-") as tmp:
        for entry in todo:
            entry.update(measure_executorch(entry, batches, test, Path(tmp)))
            result["et_machine"] = fingerprint("cpu")
            write(result, Path(args.results))


def int8_part(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Measure every row of every seed whose checkpoint is at hand and not yet measured."""
    base = base_config(args.data_dir)
    store = RunStore(args.results, SUITE)
    runs = Path(args.runs) if args.runs else None
    retrained = Path(args.retrained) if args.retrained else None
    plan = [c for s in args.seeds for m, r in ROWS
            if (c := find_checkpoint(store, base, s, m, r, runs, retrained)) is not None]
    done = {(e["seed"], e["run"], e["checkpoint"]) for e in result["int8"]
            if "int8_per_tensor_top1" in e}
    todo = [c for c in plan if (c["seed"], c["run"], c["checkpoint"]) not in done]
    log(f"INT8: {len(plan)} checkpoints at hand, {len(todo)} to measure")
    if "plain_graph" not in result:
        with tempfile.TemporaryDirectory(prefix="roads-") as tmp:
            # the graph every road should deploy as: plain-20's, folded; BN statistics
            # calibrated so that no two folded biases are equal (the exporter shares equal ones)
            plain = calibrate_bn(create_model(STUDENT, num_classes=10, in_chans=3), 2,
                                 (3, 32, 32), 8, seed=SEED)
            path = export(plain, "onnx", Path(tmp) / "plain.onnx", (3, 32, 32)).path
            result["plain_graph"] = graph_signature(Path(path))
    if not todo:
        return
    data = base.data
    batches = calibration_batches(data, CALIBRATION_IMAGES, seed=SEED)
    test = build_data(dataclasses.replace(data, limit_test=None, val_split=0.0, batch_size=1),
                      device="cpu").test
    with tempfile.TemporaryDirectory(prefix="roads-") as tmp:
        for entry in todo:
            measured = measure_int8(entry, batches, test, Path(tmp))
            result["int8"] = [e for e in result["int8"]
                              if (e["seed"], e["run"]) != (entry["seed"], entry["run"])]
            result["int8"].append(measured)
            result["int8_machine"] = fingerprint("cpu")
            write(result, Path(args.results))


def speed_part(result: dict[str, Any], args: argparse.Namespace) -> None:
    """Median and fastest optimiser step of every row's objective, interleaved."""
    torch.set_num_threads(args.threads)
    base = base_config(None)
    shape, batch = (3, 32, 32), base.data.batch_size
    torch.manual_seed(0)
    teacher = create_model(TEACHER, num_classes=10, in_chans=3)
    calibrate_bn(teacher, num_batches=2, input_shape=shape, batch_size=batch)
    steppers = {}
    for model, row in ROWS:
        cfg = copy.deepcopy(base).override(list(row.overrides))
        cfg.distill.method = row.method
        net = create_model(model, **model_kwargs(cfg.model, 10, 3))
        objective = build_objective(cfg.distill, net, copy.deepcopy(teacher), input_shape=shape)
        objective.train()
        if hasattr(objective, "set_progress"):
            objective.set_progress(0.1, 1)  # inside JointRD's decay window
        if base.train.channels_last:
            to_channels_last(objective)
        steppers[f"{label(model, row)} {row.method}"] = (
            objective, build_optimizer(objective, base.optim))
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, *shape, generator=g)
    labels = torch.randint(0, 10, (batch,), generator=g)
    if base.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    _, scaler = amp_setup(None, torch.device("cpu"))  # fp32: a scaler that does not scale
    load_start = load_average()
    for objective, opt in steppers.values():
        for _ in range(2):
            accumulation_step(objective, opt, scaler, [(images, labels)], None)
    times: dict[str, list[float]] = {k: [] for k in steppers}
    names = list(steppers)
    start = time.perf_counter()
    for r in range(args.steps):
        if r >= 3 and time.perf_counter() - start > args.time_limit:
            break
        for name in names[r % len(names):] + names[:r % len(names)]:
            objective, opt = steppers[name]
            t0 = time.perf_counter()
            accumulation_step(objective, opt, scaler, [(images, labels)], None)
            times[name].append(time.perf_counter() - t0)
    ce = f"{STUDENT} ce"
    med_ce, min_ce = statistics.median(times[ce]), min(times[ce])
    result["speed"] = {
        "threads": args.threads, "batch": batch, "input": list(shape),
        "loadavg_start": load_start, "loadavg_end": load_average(), "machine": fingerprint("cpu"),
        "env": {k: os.environ[k] for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS") if k in os.environ},
        "rows": [{"objective": n, "median_step_ms": 1e3 * statistics.median(t),
                  "min_step_ms": 1e3 * min(t), "steps": len(t),
                  "ratio_to_ce": statistics.median(t) / med_ce, "ratio_to_ce_min": min(t) / min_ce}
                 for n, t in times.items()],
    }
    write(result, Path(args.results))


def _mean(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f}" if values else "-"


def by_row(result: dict[str, Any]) -> list[dict[str, Any]]:
    """Per suite row: the INT8 measurements of its seeds, in the suite's order."""
    out = []
    for model, row in ROWS:
        name = run_name(model, row)
        es = sorted((e for e in result["int8"] if e["run"] == name), key=lambda e: e["seed"])
        out.append({"network": label(model, row), "method": row.method, "run": name,
                    "entries": es})
    return out


def format_markdown(result: dict[str, Any]) -> str:
    rows = by_row(result)
    plain_sig = result.get("plain_graph")
    lines = [f"# Every road to a shortcut-free network: CIFAR-10 suite, INT8 and cost "
             f"({result['date']})", "", "Produced by:", ""]
    lines += [f"    {result[k]}" for k in ("int8_command", "executorch_command", "speed_command")
              if k in result]
    lines.append("")
    if result["int8"]:
        m = result["int8_machine"]
        lines += [
            f"INT8: ONNX Runtime static QDQ (per-channel INT8 weights, and per-tensor in the "
            f"last-but-one column; MinMax on "
            f"{CALIBRATION_IMAGES} training images, seed {SEED}), fp32 and INT8 top-1 on the full "
            f"10k test set (CIFAR-10, JPEG copy), measured on {fingerprint_name(m)}. 'record' is the suite record's fp32 top-1 "
            "(PyTorch); 'checkpoint' the fp32 top-1 of the weights measured here (the same run, "
            "or a retrained one: see source). ExecuTorch: PT2E with the XNNPACK quantiser on the "
            "same calibration images, run by the XNNPACK delegate, batch 1; its drop is "
            "against the ONNX fp32 top-1.", ""]
        table = []
        for r in rows:
            es = r["entries"]
            if not es:
                table.append([r["network"], r["method"], *["-"] * 8,
                              "no checkpoint at hand (not retrained)"])
                continue
            drops = [e["int8_drop_points"] for e in es]
            tensor = [e["int8_per_tensor_drop_points"] for e in es
                      if "int8_per_tensor_drop_points" in e]
            same = "-" if plain_sig is None else (
                "yes" if all(e["graph"] == plain_sig for e in es) else
                f"no ({es[0]['feature_adds']} Adds)")
            sources = sorted({e["source"] for e in es})
            et = [e for e in es if "et_int8_top1" in e]
            et_cell = (f"{_mean([e['et_int8_top1'] for e in et])} "
                       f"({statistics.fmean(e['et_int8_drop_points'] for e in et):+.2f})"
                       if et else "-")
            table.append([
                r["network"], r["method"], ", ".join(str(e["seed"]) for e in es),
                _mean([e["record_top1"] for e in es]), _mean([e["checkpoint_top1"] for e in es]),
                _mean([e["fp32_top1"] for e in es]), _mean([e["int8_top1"] for e in es]),
                f"{statistics.fmean(drops):+.2f} ({', '.join(f'{d:+.2f}' for d in drops)})",
                (f"{statistics.fmean(tensor):+.2f} ({', '.join(f'{d:+.2f}' for d in tensor)})"
                 if tensor else "-"), et_cell,
                f"{same}; {'; '.join(sources)}"])
        lines.append(markdown_table(
            ["network", "method", "seeds", "record fp32 (%)", "checkpoint fp32 (%)",
             "ONNX fp32 (%)", "ONNX INT8 (%)", "INT8 drop, points (per seed)",
             "drop with per-tensor weights", "ExecuTorch XNNPACK INT8 (%) (drop)",
             "deployed graph = plain-20's; source"], table))
    speed = result.get("speed")
    if speed:
        m = speed["machine"]
        lines += ["", f"Training cost: one optimiser step per objective, batch {speed['batch']}, "
                  f"{'x'.join(map(str, speed['input']))}, {speed['threads']} thread(s), steps "
                  f"interleaved, on {fingerprint_name(m)}; load "
                  f"average {speed['loadavg_start']} at start, {speed['loadavg_end']} at end "
                  f"(above the thread count: other jobs shared the machine); environment "
                  f"{speed['env'] or 'default'}.", ""]
        lines.append(markdown_table(
            ["objective", "step ms (median)", "step ms (fastest)", "steps", "/ plain CE (median)",
             "/ plain CE (fastest)"],
            [[r["objective"], f"{r['median_step_ms']:.0f}", f"{r['min_step_ms']:.0f}", r["steps"],
              f"{r['ratio_to_ce']:.2f}x", f"{r['ratio_to_ce_min']:.2f}x"]
             for r in speed["rows"]]))
    return "\n".join(lines) + "\n"


def write(result: dict[str, Any], results: Path) -> None:
    results.mkdir(parents=True, exist_ok=True)
    (results / "roads_cifar10.json").write_text(json.dumps(result, indent=1) + "\n")
    (results / "roads_cifar10.md").write_text(format_markdown(result))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", help="folder holding cifar-10-batches-py/")
    p.add_argument("--runs", help="the --out folder of `resdist reproduce` (recorded runs)")
    p.add_argument("--retrained", help="folder of retrained runs: DIR/seedS/RUN/last.pth")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--part", choices=("int8", "executorch", "speed", "all"), default="all")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=20, help="interleaved rounds of steps at most")
    p.add_argument("--time-limit", type=float, default=240.0, help="seconds of timing at most")
    p.add_argument("--render-only", action="store_true")
    args = p.parse_args(argv)
    path = Path(args.results) / "roads_cifar10.json"
    result = json.loads(path.read_text()) if path.exists() else {"int8": []}
    result["date"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    command = shlex.join(["python", "benchmarks/roads_cifar10.py", *(argv or sys.argv[1:])])
    if not args.render_only:
        if args.part in ("int8", "all"):
            result["int8_command"] = command
            int8_part(result, args)
        if args.part in ("executorch", "all"):
            result["executorch_command"] = command
            executorch_part(result, args)
        if args.part in ("speed", "all"):
            result["speed_command"] = command
            speed_part(result, args)
    write(result, Path(args.results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
