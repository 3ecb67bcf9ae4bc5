"""``resdist export`` and ``resdist profile``: argparse glue over :mod:`resdist.deploy`.

``cli.py`` adds the sub-commands with :func:`add_export_parser` / :func:`add_profile_parser`;
each sets ``func`` to a handler taking the parsed ``args`` and returning an exit code. User
errors are raised as ``ValueError`` subclasses with a one-line message for the CLI to print.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ..config import STEMS
from .errors import DeployError

__all__ = ["add_export_parser", "add_profile_parser", "run_export", "run_profile"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _threads(text: str) -> int:
    """Thread count: a positive integer, or ``all`` / ``0`` for every available core."""
    if text.lower() in ("all", "0"):
        return 0
    return _positive_int(text)


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``resdist export --checkpoint PATH --format {onnx,torchscript} --out FILE``."""
    p = subparsers.add_parser(
        "export",
        help="fold BatchNorm/Dirac and export a trained network to ONNX or TorchScript",
        description="Fold BatchNorm and Dirac kernels into the convolutions, export the "
        "network, check the exported graph against PyTorch and print a JSON report.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="resdist checkpoint (.pth) or run folder holding last.pth")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx", dest="fmt",
                   help="output format (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument("--input-shape", type=_positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape; defaults to the one stored in the checkpoint")
    p.add_argument("--opset", type=_positive_int, default=None,
                   help="ONNX opset (default: 18)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip running the exported model against PyTorch")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``resdist export``; prints the report as JSON and returns 0."""
    from .export import DEFAULT_OPSET, export

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise DeployError(f"checkpoint not found: {ckpt}")
    report = export(
        ckpt, args.fmt, args.out, input_shape=args.input_shape,
        opset=args.opset or DEFAULT_OPSET, verify=not args.no_verify,
    )
    print(json.dumps(report, indent=2))
    return 0


def add_profile_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``resdist profile MODEL [MODEL ...]``: memory, bytes moved and ORT latency side by side."""
    p = subparsers.add_parser(
        "profile",
        help="compare ResNets and plain networks: peak memory, bytes moved, ORT latency",
        description="Export each model (registry name or checkpoint) to ONNX and report peak "
        "live activation memory, feature-map bytes moved, MACs and ONNX Runtime CPU latency, "
        "with ResNet/plain ratios (plainN is paired with resnetN). Randomly initialised "
        "registry models get BatchNorm statistics calibrated on Gaussian inputs first.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="registry name (resnet56, plain56, resnet50, ...) or checkpoint path")
    p.add_argument("--input-size", type=_positive_int, default=32, metavar="N",
                   help="input height and width (default: %(default)s)")
    p.add_argument("--in-chans", type=_positive_int, default=3, metavar="C",
                   help="input channels (default: %(default)s)")
    p.add_argument("--num-classes", type=_positive_int, default=10, metavar="K",
                   help="classifier outputs for registry models (default: %(default)s)")
    p.add_argument("--stem", choices=STEMS, default=None,
                   help="stem of registry models (default: the model's own: imagenet for "
                   "ResNet-18/34/50, cifar for the thin CIFAR nets)")
    p.add_argument("--batch-sizes", type=_positive_int, nargs="+", default=[1, 8, 32],
                   metavar="B", help="batch sizes to time (default: 1 8 32)")
    p.add_argument("--threads", type=_threads, nargs="+", default=[1, 0], metavar="T",
                   help="ORT intra-op thread counts; 'all' or 0 for every core (default: 1 all)")
    p.add_argument("--runs", type=_positive_int, default=20, metavar="N",
                   help="timed runs per model and setting (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="stop a setting's runs after S seconds once each model has 3 runs")
    p.add_argument("--no-latency", action="store_true", help="memory and MACs only")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write profile.json, profile.png and profile.md there")
    p.set_defaults(func=run_profile)
    return p


def run_profile(args: argparse.Namespace) -> int:
    """Handler of ``resdist profile``; prints the tables and returns 0."""
    from .profile import format_table, profile_models, write_profile_report

    kwargs: dict[str, Any] = {"num_classes": args.num_classes, "in_chans": args.in_chans}
    if args.stem is not None:
        kwargs["stem"] = args.stem
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise DeployError(f"--max-seconds must be positive, got {args.max_seconds}")
    result = profile_models(
        args.models,
        input_shape=(args.in_chans, args.input_size, args.input_size),
        batch_sizes=args.batch_sizes,
        threads=[t or None for t in args.threads],
        runs=args.runs,
        max_seconds=args.max_seconds,
        model_kwargs=kwargs,
        latency=not args.no_latency,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
    )
    result["meta"]["command"] = "resdist " + shlex.join(sys.argv[1:]) if sys.argv else None
    print(format_table(result))
    if args.out:
        write_profile_report(result, args.out)
        print(f"\nwrote {Path(args.out) / 'profile.json'}, profile.png and profile.md")
    return 0
