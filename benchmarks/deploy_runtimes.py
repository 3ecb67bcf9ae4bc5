"""The ResNet and its plain student on the runtimes engineers ship with, side by side.

Thin ResNet-56 / plain-56 at 3x32x32, and ImageNet-width ResNet-18 / plain-18 and ResNet-50 /
plain-50 at 3x224x224 (random weights, BatchNorm statistics calibrated on Gaussian inputs),
each exported for ONNX Runtime, OpenVINO, ExecuTorch (XNNPACK) and LiteRT in fp32 and in INT8
through the runtime's own quantiser, then timed in interleaved rounds (medians) at 1 and all
threads, batch 1 and 8; ExecuTorch's memory plans (XNNPACK and portable kernels) beside
resdist's liveness figure.

    python benchmarks/deploy_runtimes.py                    # every group (hours on 2 cores)
    python benchmarks/deploy_runtimes.py --group thin56     # one group; its profile is kept
    python benchmarks/deploy_runtimes.py --render-only      # the report from the kept groups
    python benchmarks/deploy_runtimes.py --quick            # thin nets only, few runs

Each group's profile is kept in ``deploy_runtimes_GROUP.json`` as soon as it is measured, so
the groups can run on different days (the report names each group's machine); ``--runtime R``
on a group already measured replaces only R's rows (said in the report); the report is
benchmarks/results/deploy_runtimes.{json,md,png} (``--out`` to change the folder).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from resdist.atomic import write_text_atomic
from resdist.deploy import merge_profiles, profile_models
from resdist.deploy.profile.report import runtime_report
from resdist.tables import markdown_table

GROUPS = {
    "thin56": ("thin-56 at 32x32", ["resnet56", "plain56"], (3, 32, 32), {"num_classes": 10},
               20),
    "resnet18": ("ResNet-18 at 224", ["resnet18", "plain18"], (3, 224, 224),
                 {"num_classes": 1000, "stem": "imagenet"}, 10),
    "resnet50": ("ResNet-50 at 224", ["resnet50", "plain50"], (3, 224, 224),
                 {"num_classes": 1000, "stem": "imagenet"}, 6),
}


def _plot(result: dict, path: Path) -> None:
    """Latency ratio ResNet / plain per runtime and precision, one panel per pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lat = result["runtimes"]["latency"]
    pairs = [(p["resnet"], p["plain"]) for p in result["pairs"]]
    bars = max(1, len(lat) // max(2 * len(pairs), 1))
    fig, axes = plt.subplots(len(pairs), 1, figsize=(max(6.0, 0.32 * bars), 4.5 * len(pairs)),
                             squeeze=False)
    colours = {"onnxruntime": "tab:blue", "openvino": "tab:orange", "executorch": "tab:green",
               "litert": "tab:red"}
    for ax, (res, plain) in zip(axes[:, 0], pairs):
        labels, ratios, colour = [], [], []
        for r in lat:
            if r["model"] != plain:
                continue
            match = [x for x in lat if x["model"] == res and all(
                x[k] == r[k] for k in ("runtime", "precision", "threads", "batch"))]
            if match:
                labels.append(f"{r['precision']} t{r['threads']} b{r['batch']}")
                ratios.append(match[0]["median_ms"] / r["median_ms"])
                colour.append(colours.get(r["runtime"], "tab:gray"))
        ax.bar(range(len(ratios)), ratios, color=colour)
        for name, c in colours.items():
            ax.bar([0], [0], color=c, label=name)
        ax.legend(fontsize=7, loc="upper left")
        ax.axhline(1.0, color="black", lw=0.8)
        ax.set_xticks(range(len(ratios)), labels, rotation=90, fontsize=7)
        ax.set_title(f"{res} / {plain}: latency ratio (>1: plain faster)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _replace_runtimes(kept: dict, new: dict) -> dict:
    """``kept`` with the rows of the runtimes ``new`` measured replaced by ``new``'s (a group
    re-measured on some runtimes only); the other runtimes' rows and the group's own meta stay,
    and the re-measurement is listed in ``meta["remeasured"]``."""
    redone = {r["runtime"] for part in new["runtimes"].values() for r in part}
    for part, rows in new["runtimes"].items():
        kept["runtimes"][part] = [r for r in kept["runtimes"].get(part, [])
                                  if r["runtime"] not in redone] + rows
    meta = {k: new["meta"].get(k) for k in ("command", "cpu", "date", "wall_seconds",
                                            "loadavg_start", "loadavg_end")}
    kept["meta"].setdefault("remeasured", []).append({"runtimes": sorted(redone), **meta})
    return kept


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    parser.add_argument("--quick", action="store_true", help="thin nets, few runs")
    parser.add_argument("--runtime", nargs="+", default=["all"])
    parser.add_argument("--group", nargs="+", choices=list(GROUPS), default=list(GROUPS))
    parser.add_argument("--render-only", action="store_true",
                        help="write the report from the groups already measured")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    start = time.perf_counter()
    for key in [] if args.render_only else (["thin56"] if args.quick else args.group):
        title, models, shape, kwargs, runs = GROUPS[key]
        log(title)
        result = profile_models(
            models, input_shape=shape, model_kwargs=kwargs, batch_sizes=(1, 8),
            threads=(1, None), runs=3 if args.quick else runs, warmup=2, min_runs=3,
            calibration_batch_size=8, memory_check=False, int8=True, runtimes=args.runtime,
            log=log)
        result.meta["command"] = shlex.join(["python", "benchmarks/deploy_runtimes.py",
                                             *(argv or sys.argv[1:])])
        result.meta["wall_seconds"] = round(time.perf_counter() - start, 1)
        measured = result.to_dict()
        kept = out / f"deploy_runtimes_{key}.json"
        if "all" not in args.runtime and not args.quick and kept.is_file():
            measured = _replace_runtimes(json.loads(kept.read_text()), measured)
        write_text_atomic(kept, json.dumps(measured, indent=2, default=str))
    results = [json.loads((out / f"deploy_runtimes_{key}.json").read_text())
               for key in GROUPS if (out / f"deploy_runtimes_{key}.json").is_file()]
    if not results:
        raise SystemExit("no group measured yet: run without --render-only")
    merged = merge_profiles(results)
    result = merged.to_dict()
    write_text_atomic(out / "deploy_runtimes.json", json.dumps(result, indent=2, default=str))
    liveness = markdown_table(
        ["ResNet / plain", "liveness peak (ours), ResNet", "plain", "ratio"],
        [[f"{p.resnet} / {p.plain}",
          f"{merged.model(p.resnet).peak_activation_bytes_per_image:,}",
          f"{merged.model(p.plain).peak_activation_bytes_per_image:,}",
          f"{p.peak_ratio:.2f}x"] for p in merged.pairs])
    text = (runtime_report(merged) + "\n\nresdist's liveness figure (ONNX graph, fp32, batch 1, "
            "bytes):\n\n" + liveness + "\n\nMeasured by: " + "; ".join(
                f"`{r['meta'].get('command')}` on {r['meta'].get('cpu')} at "
                f"{r['meta'].get('date')}, {r['meta'].get('wall_seconds')} s, load average at "
                f"the end {r['meta'].get('loadavg_end')}" + "".join(
                    f" ({', '.join(m['runtimes'])} re-measured by `{m['command']}` at "
                    f"{m['date']}, load average at the end {m['loadavg_end']})"
                    for m in r["meta"].get("remeasured", [])) for r in results) + "\n")
    write_text_atomic(out / "deploy_runtimes.md", text)
    _plot(result, out / "deploy_runtimes.png")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
