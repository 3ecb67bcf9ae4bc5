"""What deploying without shortcuts buys: ResNets vs their plain counterparts on this CPU.

Profiles thin CIFAR ResNet-20/56/110 and their plain networks at 3x32x32, and ImageNet-width
ResNet-18/34/50 (ImageNet stem) and theirs at 3x224x224: peak live activation memory and
feature-map bytes moved (liveness over the exported ONNX graph), MACs, and ONNX Runtime CPU
latency at batch 1, 8 and 32 with 1 thread and all cores, measured side by side. Weights are
random with BatchNorm statistics calibrated on Gaussian inputs (timing is insensitive to the
values once denormals are flushed and activations have sane scales).

    python benchmarks/deploy.py            # 4-10 minutes on 2 cores, depending on load
    python benchmarks/deploy.py --quick    # a smoke run of a few seconds per model

Writes benchmarks/results/deploy.{json,png,md} (``--out`` to change the folder);
``--render-only`` re-renders the markdown and chart from an existing deploy.json.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from resdist.deploy import format_table, merge_profiles, profile_models, write_profile_report

THIN = ["resnet20", "plain20", "resnet56", "plain56", "resnet110", "plain110"]
IMAGENET = ["resnet18", "plain18", "resnet34", "plain34", "resnet50", "plain50"]


def _pair(result: dict, plain: str) -> dict | None:
    return next((p for p in result["pairs"] if p["plain"] == plain), None)


def highlights(result: dict) -> list[str]:
    """The figures docs/method.md section 7 names, in words."""
    out = []
    for plain, target in (("plain56", "1.5x (192 vs 128 KiB)"), ("plain50", "about 1.5x")):
        p = _pair(result, plain)
        if p:
            res = next(m for m in result["models"] if m["name"] == p["resnet"])
            pl = next(m for m in result["models"] if m["name"] == plain)
            out.append(
                f"Peak activation memory {p['resnet']} / {plain}: {p['peak_ratio']:.2f}x "
                f"({res['peak_activation_bytes_per_image'] / 2**10:.0f} vs "
                f"{pl['peak_activation_bytes_per_image'] / 2**10:.0f} KiB per image; "
                f"docs/method.md: {target}); bytes moved {p['bytes_moved_ratio']:.2f}x; "
                f"with Conv+Add fusion: peak {p['peak_ratio_fused_add']:.2f}x, "
                f"bytes {p['bytes_moved_ratio_fused_add']:.2f}x"
            )
    p = _pair(result, "plain50")
    if p:
        out.append(f"MACs resnet50 / plain50: {p['macs_ratio']:.2f}x (plain-50 has no projection "
                   "convs, so part of any speed-up is fewer MACs)")
        for r in p["latency_ratio"]:
            if r["batch"] == 8:
                out.append(f"ORT latency resnet50 / plain50 at batch 8, {r['threads']} thread(s): "
                           f"{r['ratio']:.2f}x (docs/method.md: about 1.1x on a desktop CPU)")
    for plain in ("plain18", "plain34"):
        p = _pair(result, plain)
        if p:
            out.append(f"{p['resnet']} / {plain}: peak {p['peak_ratio']:.2f}x (stem-dominated), "
                       f"bytes moved {p['bytes_moved_ratio']:.2f}x")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--quick", action="store_true", help="few runs, for a smoke test")
    parser.add_argument("--note", default=None, help="free text added to the report")
    parser.add_argument("--render-only", action="store_true",
                        help="re-render deploy.md/.png from an existing deploy.json, no measuring")
    args = parser.parse_args(argv)
    if args.render_only:
        result = json.loads((Path(args.out) / "deploy.json").read_text())
        result["meta"]["highlights"] = highlights(result)
        print(write_profile_report(result, args.out, name="deploy"))
        return 0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    quick = args.quick
    start = time.perf_counter()
    common = {"batch_sizes": (1, 8, 32), "threads": (1, None), "warmup": 1, "min_runs": 3}
    log("thin CIFAR networks, 3x32x32")
    thin = profile_models(
        THIN, input_shape=(3, 32, 32), model_kwargs={"num_classes": 10},
        runs={1: 5, 8: 3, 32: 3} if quick else {1: 300, 8: 100, 32: 40},
        max_seconds=2 if quick else 15, log=log, **common,
    )
    log("ImageNet-width networks, 3x224x224")
    imagenet = profile_models(
        IMAGENET, input_shape=(3, 224, 224),
        model_kwargs={"num_classes": 1000, "stem": "imagenet"},
        runs={1: 3, 8: 1, 32: 1} if quick else {1: 50, 8: 20, 32: 6},
        max_seconds=1 if quick else 45, calibration_batch_size=8, log=log,
        **({**common, "batch_sizes": (1, 8)} if quick else common),
    )
    result = merge_profiles([thin, imagenet]).to_dict()
    meta = result["meta"]
    meta["command"] = shlex.join(["python", "benchmarks/deploy.py", *(argv or sys.argv[1:])])
    meta["wall_seconds"] = round(time.perf_counter() - start, 1)
    notes = [
        "thin nets: num_classes 10, CIFAR stem; ImageNet-width nets: num_classes 1000, "
        "ImageNet stem",
        "rounds per setting: up to the run count, or until the time limit once every model "
        f"has 3 runs (thin {thin.meta['runs']}, limit {thin.meta['max_seconds']} s; "
        f"ImageNet {imagenet.meta['runs']}, limit {imagenet.meta['max_seconds']} s)",
        "the machine may have been shared with other jobs (see the load averages); ratios "
        "are measured side by side, interleaved run by run, to be robust to that",
    ]
    if args.note:
        notes.append(args.note)
    meta["note"] = "; ".join(notes)
    meta["highlights"] = highlights(result)
    write_profile_report(result, args.out, name="deploy")
    print(format_table(result))
    print()
    print("\n".join(meta["highlights"]))
    print(f"\nwrote {Path(args.out) / 'deploy.md'} (.json, .png) in {meta['wall_seconds']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
