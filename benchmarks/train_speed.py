"""Training speed: a JointRD step against a cross-entropy step on the same plain student.

Times one optimiser step (forward under autocast when AMP is on, backward, Nesterov SGD step from
the engine's optimiser builder: what ``Trainer.train_epoch`` does per batch) of three objectives
from ``resdist.distill`` on the thin plain-56 student with a ResNet-56 teacher:

- ``ce``: ``CrossEntropy(student)``
- ``jointrd``: ``ResidualDistiller(teacher, student)`` with the margin feature term (lambda 1e-3)
- ``jointrd-nofeat``: the same with ``feature_weight=0`` (no teacher forward, no connectors)

The three run side by side, interleaved step by step (the order rotating every round), so a
machine shared with other jobs slows all of them alike; the figure per objective is the median
step time after a warm-up. Settings: on CPU fp32 with channels_last off and on; on CUDA, when
present, also bf16 and fp16 autocast (fp16 with a GradScaler). The teacher's BatchNorm
statistics are calibrated on random images first (timing does not depend on the values once
denormals are flushed and activations have sane scales).

    python benchmarks/train_speed.py --threads 2          # 1-3 minutes on 2 CPU cores
    python benchmarks/train_speed.py --threads 1,2        # both thread counts
    OMP_WAIT_POLICY=PASSIVE python benchmarks/train_speed.py --threads 1,2   # shared machine
    python benchmarks/train_speed.py --quick              # a smoke run

On a machine other jobs are loading, multi-threaded steps with OpenMP's default (spinning) wait
policy can run 10-70x slower in bursts (a descheduled thread stalls every parallel region);
``OMP_WAIT_POLICY=PASSIVE`` avoids that cliff at a small cost on an idle machine, and one thread
is immune to it. The environment variables that matter are recorded with the command.

Writes benchmarks/results/train_speed.{json,md} (``--out`` to change the folder). Targets
(docs/method.md section 6-7): a JointRD step at most 2.0x a CE step with the feature term, 1.7x
without; the released code's JointRD step costs about 2.5-3x.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

from resdist.config import OptimConfig
from resdist.distill import CrossEntropy, ResidualDistiller
from resdist.engine import build_optimizer
from resdist.engine.denormals import set_flush_denormal
from resdist.engine.trainer import accumulation_step, amp_setup
from resdist.machine import environment, load_average
from resdist.models import calibrate_bn, create_model
from resdist.models.memory_format import to_channels_last
from resdist.tables import markdown_table

METHODS = ("ce", "jointrd", "jointrd-nofeat")
TARGETS = {"jointrd": 2.0, "jointrd-nofeat": 1.7}
INPUTS = {"fashion-mnist": (1, 28, 28), "cifar": (3, 32, 32)}
ENV_KEYS = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "KMP_BLOCKTIME", "GOMP_SPINCOUNT")


def build_objectives(student_name: str, teacher_name: str, input_shape: tuple[int, int, int],
                     num_classes: int, device: torch.device, channels_last: bool,
                     batch: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    kw = {"num_classes": num_classes, "in_chans": input_shape[0]}
    student = create_model(student_name, **kw).to(device)
    teacher = create_model(teacher_name, **kw).to(device)
    calibrate_bn(teacher, num_batches=2, input_shape=input_shape, batch_size=batch)
    objectives = {
        "ce": CrossEntropy(copy.deepcopy(student)),
        "jointrd": ResidualDistiller(teacher, copy.deepcopy(student), feature_weight=1e-3,
                                     input_shape=input_shape),
        "jointrd-nofeat": ResidualDistiller(teacher, copy.deepcopy(student), feature_weight=0.0,
                                            input_shape=input_shape),
    }
    for obj in objectives.values():
        obj.to(device)
        if channels_last:
            to_channels_last(obj)
        obj.train()
        obj.set_progress(0.1, 1)  # inside the decay window: the mixed paths are weighted
    return objectives


class Stepper:
    """One optimiser step of ``objective``, as ``Trainer.train_epoch`` takes it."""

    def __init__(self, objective: nn.Module, device: torch.device, amp: str | None) -> None:
        self.objective, self.device = objective, device
        self.optimizer = build_optimizer(objective, OptimConfig(lr=0.01))
        self.amp_dtype, self.scaler = amp_setup(amp, device)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        accumulation_step(self.objective, self.optimizer, self.scaler, [(images, labels)],
                          self.amp_dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_setting(device: torch.device, amp: str | None, channels_last: bool, threads: int,
                 args) -> list[dict]:
    """Step times of the three objectives in one setting, interleaved; one row per objective."""
    if device.type == "cpu":
        torch.set_num_threads(threads)
    shape = INPUTS[args.input]
    objectives = build_objectives(args.student, args.teacher, shape, 10, device, channels_last,
                                  args.batch)
    steppers = {name: Stepper(obj, device, amp) for name, obj in objectives.items()}
    g = torch.Generator(device="cpu").manual_seed(0)
    images = torch.randn(args.batch, *shape, generator=g).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    for step in steppers.values():
        for _ in range(args.warmup):
            step(images, labels)
        _sync(device)
    times: dict[str, list[float]] = {name: [] for name in steppers}
    names = list(steppers)
    start = time.perf_counter()
    for r in range(args.steps):
        if r >= 3 and time.perf_counter() - start > args.time_limit:
            break
        for name in names[r % len(names):] + names[: r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            steppers[name](images, labels)
            _sync(device)
            times[name].append(time.perf_counter() - t0)
    rows = []
    ce, ce_min = statistics.median(times["ce"]), min(times["ce"])
    for name in names:
        med, low = statistics.median(times[name]), min(times[name])
        rows.append({
            "device": device.type, "precision": amp or "fp32", "channels_last": channels_last,
            "threads": threads if device.type == "cpu" else None, "method": name,
            "median_step_ms": round(1e3 * med, 2), "min_step_ms": round(1e3 * low, 2),
            "images_per_s": round(args.batch / med, 1), "ratio_to_ce": round(med / ce, 3),
            "ratio_to_ce_min": round(low / ce_min, 3), "steps": len(times[name]),
        })
    return rows


def settings(device: torch.device) -> list[tuple[str | None, bool]]:
    if device.type == "cuda":
        return [(None, False), (None, True), ("bf16", True), ("fp16", True)]
    return [(None, False), (None, True)]


def format_markdown(result: dict) -> str:
    lines = [
        f"# Training speed: JointRD vs cross-entropy ({result['date']})",
        "",
        "Produced by:",
        "",
        f"    {result['command']}",
        "",
        f"- CPU: {result['cpu']} ({result['cores']} cores available); torch threads: "
        f"{', '.join(map(str, result['threads']))}",
        f"- torch {result['torch']}, Python {result['python']}"
        + (f", GPU: {result['gpu']}" if result.get("gpu") else ""),
        f"- Student {result['student']}, teacher {result['teacher']} (frozen, BN statistics "
        f"calibrated on random images); input {result['input_shape']}, batch {result['batch']}, "
        f"{result['num_classes']} classes; Nesterov SGD from the engine's optimiser builder",
        f"- Median (and fastest) of up to {result['steps']} interleaved steps per objective "
        f"(fewer once a setting has run {result['time_limit_s']:.0f} s) after "
        f"{result['warmup']} warm-up steps; denormals flushed on CPU",
        f"- Load average (1/5/15 min) at start {result.get('loadavg_start', [])}, end {result['load_end']}; "
        "other processes may have shared the CPU. Interleaving keeps slow drifts fair; on an "
        "oversubscribed machine multi-threaded steps with OpenMP's spinning wait policy hit bursts "
        "of 10-70x slowdowns (set OMP_WAIT_POLICY=PASSIVE, see the command), and the "
        "fastest-step ratio is the one least disturbed by other jobs",
        "",
        markdown_table(
            ["device", "precision", "channels_last", "threads", "objective", "step ms (median)",
             "step ms (fastest)", "images/s (median)", "/ CE (median)", "/ CE (fastest)"],
            [[r["device"], r["precision"], "on" if r["channels_last"] else "off",
              r["threads"] or "-", r["method"], f"{r['median_step_ms']:.1f}",
              f"{r['min_step_ms']:.1f}", f"{r['images_per_s']:.0f}", f"{r['ratio_to_ce']:.2f}x",
              f"{r['ratio_to_ce_min']:.2f}x"] for r in result["rows"]]),
    ]
    lines += ["", "JointRD step / CE step against the targets (median; fastest):", ""]
    for r in result["rows"]:
        if r["method"] in TARGETS:
            target = TARGETS[r["method"]]
            verdict = "meets" if r["ratio_to_ce"] <= target else "misses"
            verdict_min = "meets" if r["ratio_to_ce_min"] <= target else "misses"
            threads = f", {r['threads']} thread(s)" if r["threads"] else ""
            lines.append(
                f"- {r['device']} {r['precision']}{threads}, channels_last "
                f"{'on' if r['channels_last'] else 'off'}, {r['method']}: "
                f"{r['ratio_to_ce']:.2f}x ({verdict}); {r['ratio_to_ce_min']:.2f}x "
                f"({verdict_min}); target {target:.1f}x"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default=None,
                   help="CPU thread counts to time, comma-separated, e.g. 1,2 (default: torch's)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per objective and setting")
    p.add_argument("--time-limit", type=float, default=40.0,
                   help="stop a setting's timed rounds after this many seconds (at least 3)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--input", choices=sorted(INPUTS), default="fashion-mnist")
    p.add_argument("--student", default="plain56")
    p.add_argument("--teacher", default="resnet56")
    p.add_argument("--device", default="auto", help="auto (CPU, and CUDA when present), cpu, cuda")
    p.add_argument("--quick", action="store_true", help="smoke run: batch 16, 2 steps")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = 16, 2, 1
    threads = ([int(t) for t in str(args.threads).split(",")] if args.threads
               else [torch.get_num_threads()])
    set_flush_denormal(True)
    devices = [torch.device("cpu")] if args.device in ("auto", "cpu") else []
    if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()):
        devices.append(torch.device("cuda"))
        torch.backends.cudnn.benchmark = True
    argv_used = sys.argv[1:] if argv is None else argv
    env = [f"{k}={os.environ[k]}" for k in ENV_KEYS if k in os.environ]
    result = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(env + [shlex.join(["python", "benchmarks/train_speed.py",
                                                *argv_used])]),
        **environment(), "threads": threads,
        "gpu": torch.cuda.get_device_name() if any(d.type == "cuda" for d in devices) else None,
        "student": args.student, "teacher": args.teacher,
        "input_shape": "x".join(map(str, INPUTS[args.input])), "batch": args.batch,
        "num_classes": 10, "steps": args.steps, "warmup": args.warmup,
        "time_limit_s": args.time_limit,
        "rows": [],
    }
    t0 = time.perf_counter()
    for device in devices:
        for n_threads in threads if device.type == "cpu" else [torch.get_num_threads()]:
            for amp, channels_last in settings(device):
                rows = time_setting(device, amp, channels_last, n_threads, args)
                result["rows"] += rows
                desc = (f"{device.type} {amp or 'fp32'} channels_last="
                        f"{'on' if channels_last else 'off'} threads={n_threads}")
                print(desc + ": " + ", ".join(
                    f"{r['method']} {r['median_step_ms']:.0f} ms ({r['ratio_to_ce']:.2f}x)"
                    for r in rows), flush=True)
    result["load_end"] = load_average()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_speed.json").write_text(json.dumps(result, indent=2) + "\n")
    md = format_markdown(result)
    (out / "train_speed.md").write_text(md)
    print(md)
    print(f"wrote {out / 'train_speed.json'} and {out / 'train_speed.md'} in {result['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
