"""``resdist export``, ``resdist predict`` and ``resdist profile``: argparse over
:mod:`resdist.deploy`. Each handler takes the parsed ``args``, calls one library function and
prints what it returns."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from ..config import DATASETS, STEMS, check_choice
from ..deploy.errors import DeployError
from .args import positive_int, threads

__all__ = ["add_export_parser", "add_parsers", "add_predict_parser", "add_profile_parser",
           "run_export", "run_predict", "run_profile"]


def add_parsers(sub) -> None:
    """Add ``export``, ``predict`` and ``profile``."""
    add_export_parser(sub)
    add_predict_parser(sub)
    add_profile_parser(sub)


def add_export_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``resdist export --checkpoint PATH --format {onnx,torchscript} --out FILE``."""
    from ..deploy.formats import DEFAULT_OPSET, FORMATS, MAX_OPSET, MIN_OPSET

    p = subparsers.add_parser(
        "export",
        help="fold BatchNorm/Dirac and export a trained network (ONNX, TorchScript, OpenVINO, "
        "ExecuTorch, LiteRT, safetensors)",
        description="Fold BatchNorm and Dirac kernels into the convolutions, export the "
        "network with its input contract (input shape, channels, mean/std, class names) in "
        "the file's metadata, check the exported graph against PyTorch and print a JSON "
        "report read back from the written file. See `resdist docs deploy`.",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="resdist checkpoint (.pth) or run folder holding last.pth")
    p.add_argument("--format", choices=list(FORMATS), default="onnx", dest="fmt",
                   help="output format: " + ", ".join(
                       f"{f.name} ({f.runtime})" for f in FORMATS.values())
                   + " (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument("--input-shape", type=positive_int, nargs=3, metavar=("C", "H", "W"),
                   help="input shape (default: the one stored in the checkpoint)")
    p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET}: 18 and above from the "
                   "torch.export-based exporter, lower from the TorchScript-based one "
                   "(default: %(default)s)")
    p.add_argument("--preprocess", "--bake-normalisation", action="store_true",
                   help="put the normalisation inside the graph: it then takes images scaled "
                   "to [0, 1] (or uint8 pixels with --input-dtype uint8) instead of normalised "
                   "ones")
    p.add_argument("--input-dtype", choices=("float32", "uint8"), default="float32",
                   help="element type of the graph input; uint8 (raw 0..255 pixels) needs "
                   "--preprocess (default: %(default)s)")
    p.add_argument("--no-verify", action="store_true",
                   help="skip running the exported model against PyTorch")
    q = p.add_argument_group("INT8 quantisation (each runtime's own quantiser: ONNX Runtime's "
                             "static QDQ tool, NNCF for OpenVINO, PT2E with the XNNPACK or "
                             "LiteRT quantiser)")
    q.add_argument("--quantize", choices=("int8",), default=None,
                   help="write a statically quantised model: per-channel INT8 weights, INT8 "
                   "activations calibrated on training images")
    q.add_argument("--calibration-data", metavar="DATASET",
                   help="data set whose training images calibrate the activation ranges "
                   "(fashion-mnist, cifar10, cifar100, imagefolder, synthetic; default: the "
                   "one the checkpoint's run trained on, with its folder and settings)")
    q.add_argument("--data-dir", metavar="DIR",
                   help="folder of the calibration data set (default: its standard location)")
    q.add_argument("--calibration-images", type=positive_int, default=None, metavar="N",
                   help="training images to calibrate on (default: 512)")
    q.add_argument("--reduce-range", action="store_true",
                   help="ONNX only: 7-bit weights, for x86 CPUs without VNNI, where ONNX "
                   "Runtime's INT8 kernels can saturate (the report's notes suggest it when "
                   "the INT8 model agrees poorly with fp32 on such a CPU)")
    p.set_defaults(func=run_export)
    return p


def _check_quantize_args(args: argparse.Namespace) -> None:
    quant_only = {"--calibration-data": args.calibration_data, "--data-dir": args.data_dir,
                  "--calibration-images": args.calibration_images,
                  "--reduce-range": args.reduce_range or None}
    if args.quantize is None:
        given = [flag for flag, value in quant_only.items() if value is not None]
        if given:
            raise DeployError(f"{given[0]} is only used with --quantize int8")
        return
    if args.fmt == "torchscript":
        raise DeployError("--quantize int8 writes ONNX, OpenVINO, ExecuTorch or LiteRT; "
                          "TorchScript export stays fp32")
    if args.reduce_range and args.fmt != "onnx":
        raise DeployError(f"--reduce-range is ONNX Runtime's option (--format onnx); the "
                          f"{args.fmt} quantiser keeps its own weight range")
    if args.preprocess or args.input_dtype != "float32":
        raise DeployError("--quantize int8 takes normalised float inputs; drop --preprocess / "
                          "--input-dtype (bake the normalisation into an fp32 export instead)")
    if args.calibration_data is not None:
        check_choice("--calibration-data", args.calibration_data, DATASETS, "data set",
                     DeployError)


def run_export(args: argparse.Namespace) -> int:
    """Handler of ``resdist export``; prints the report as JSON and returns 0."""
    existed = Path(args.out).is_file()
    try:
        return _run_export(args)
    except KeyboardInterrupt as e:  # every file is written atomically: nothing half-written
        kept = "the previous file is kept" if existed else "no file was written"
        raise type(e)(f"{args.out}: {kept}; export again") from None


def _run_export(args: argparse.Namespace) -> int:
    from ..deploy.exporter import export
    from ..deploy.formats import format_of

    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise DeployError(f"checkpoint not found: {ckpt}")
    exported = format_of(ckpt)
    if exported is not None and not exported.runs_code:  # TorchScript: refused when loaded,
        # with the words for a file that carries code
        raise DeployError(f"{ckpt} is an exported {exported.label} file; export starts from "
                          "the resdist checkpoint it came from (a run's last.pth or its folder)")
    _check_quantize_args(args)
    if args.quantize == "int8" and args.fmt != "onnx":
        from ..deploy.quantize import DEFAULT_CALIBRATION_IMAGES, export_int8

        report = export_int8(
            ckpt, args.fmt, args.out, args.calibration_data, data_dir=args.data_dir,
            calibration_images=args.calibration_images or DEFAULT_CALIBRATION_IMAGES,
            input_shape=args.input_shape)
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    if args.quantize == "int8":
        from ..deploy.quantize import DEFAULT_CALIBRATION_IMAGES, quantize_checkpoint

        written = quantize_checkpoint(
            ckpt, args.out, args.calibration_data, data_dir=args.data_dir,
            calibration_images=args.calibration_images or DEFAULT_CALIBRATION_IMAGES,
            input_shape=args.input_shape, opset=args.opset, reduce_range=args.reduce_range,
        )
        print(json.dumps(written.to_dict(), indent=2))
        for note in written.notes:
            print(f"resdist export: note: {note}", file=sys.stderr)
        return 0
    report = export(
        ckpt, args.fmt, args.out, input_shape=args.input_shape, opset=args.opset,
        verify=not args.no_verify, preprocess=args.preprocess, input_dtype=args.input_dtype,
    )
    print(json.dumps(report.to_dict(), indent=2))
    return 0


def add_predict_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``resdist predict MODEL IMAGE [IMAGE ...]``: top-k classes of image files."""
    p = subparsers.add_parser(
        "predict",
        help="classify PNG/JPEG images with a checkpoint or an exported ONNX file",
        description="Read each image, prepare it as the model's recorded input contract says "
        "(grey or RGB, resize and centre crop to the input size, scale and normalise), run the "
        "model and print the top classes with their probabilities.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="resdist checkpoint (.pth or run folder) or ONNX file from resdist "
                   "export (both run no code when loaded); a TorchScript file only with "
                   "--trust-torchscript")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (PNG, JPEG, ...) or folders searched recursively")
    p.add_argument("--topk", type=positive_int, default=5, metavar="K",
                   help="classes shown per image (default: %(default)s)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON list of {file, top: [{class, index, probability}]}")
    p.add_argument("--trust-torchscript", action="store_true",
                   help="allow a TorchScript MODEL: loading it RUNS THE CODE THE FILE CARRIES, "
                   "so only for files whose source you trust (e.g. your own resdist export)")
    p.set_defaults(func=run_predict)
    return p


def run_predict(args: argparse.Namespace) -> int:
    """Handler of ``resdist predict``; prints one block (or JSON) per image and returns 0."""
    from ..deploy.predictor import predict

    results = predict(args.model, args.images, topk=args.topk,
                      trust_torchscript=args.trust_torchscript)
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return 0
    for r in results:
        print(r.path)
        for name, index, prob in r.top:
            print(f"  {prob:7.2%}  {name} ({index})")
    return 0


def add_profile_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``resdist profile MODEL [MODEL ...]``: memory, bytes moved and ORT latency side by side."""
    from ..deploy.formats import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET

    p = subparsers.add_parser(
        "profile",
        help="compare ResNets and plain networks: peak memory, bytes moved, ORT latency",
        description="Export each model (registry name or checkpoint) to ONNX and report peak "
        "live activation memory, feature-map bytes moved, MACs and ONNX Runtime CPU latency, "
        "with ResNet/plain ratios (plainN is paired with resnetN). Randomly initialised "
        "registry models get BatchNorm statistics calibrated on Gaussian inputs first.",
    )
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="registry name (resnet56, plain56, resnet50, timm:resnet50d, ...), "
                   "NAME=FILE for a registry model with a state dict's weights (a torchvision "
                   "or timm teacher: resnet50=teacher.pth), or a checkpoint path")
    p.add_argument("--input-size", type=positive_int, default=32, metavar="N",
                   help="input height and width (default: %(default)s)")
    p.add_argument("--in-chans", type=positive_int, default=3, metavar="C",
                   help="input channels (default: %(default)s)")
    p.add_argument("--num-classes", type=positive_int, default=10, metavar="K",
                   help="classifier outputs for registry models (default: %(default)s)")
    p.add_argument("--stem", choices=STEMS, default=None,
                   help="stem of registry models (default: the model's own: imagenet for "
                   "ResNet-18/34/50, cifar for the thin CIFAR nets)")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 8, 32],
                   metavar="B", help="batch sizes to time (default: 1 8 32)")
    p.add_argument("--threads", type=threads, nargs="+", default=[1, 0], metavar="T",
                   help="ORT intra-op thread counts; 'all' or 0 for every core (default: 1 all)")
    p.add_argument("--runs", type=positive_int, default=20, metavar="N",
                   help="timed runs per model and setting (default: %(default)s)")
    p.add_argument("--max-seconds", type=float, default=None, metavar="S",
                   help="stop a setting's runs after S seconds once each model has 3 runs")
    p.add_argument("--no-latency", action="store_true", help="memory and MACs only")
    p.add_argument("--int8", action="store_true",
                   help="also quantise every model to INT8 (ONNX Runtime static QDQ) and time "
                   "it beside fp32; checkpoints calibrate on the training images of the data "
                   "set their input contract names, NAME=FILE and registry models on "
                   "--calibration-data when given, else on Gaussian images")
    p.add_argument("--calibration-data", metavar="DATASET",
                   help="with --int8: the data set whose training images calibrate models "
                   "that record none (NAME=FILE state dicts, registry models), at "
                   "--input-size (fashion-mnist, cifar10, cifar100, imagefolder, synthetic)")
    p.add_argument("--data-dir", metavar="DIR",
                   help="with --int8: the folder of the calibration data set")
    p.add_argument("--runtime", nargs="+", default=[], metavar="NAME",
                   choices=["onnxruntime", "openvino", "executorch", "litert", "all"],
                   help="also time every model on these runtimes (onnxruntime, openvino, "
                   "executorch, litert, or all), fp32 and with --int8 INT8 through each "
                   "runtime's own quantiser, with the memory each runtime plans; each needs its "
                   "extra: pip install 'resdist[openvino,executorch,litert]'")
    p.add_argument("--opset", type=positive_int, default=DEFAULT_OPSET, metavar="N",
                   help=f"ONNX opset of the profiled graphs, {MIN_OPSET}..{MAX_OPSET}, as for "
                   "export: the one your runtime takes (default: %(default)s)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write profile.json, profile.png and profile.md there")
    p.set_defaults(func=run_profile)
    return p


def run_profile(args: argparse.Namespace) -> int:
    """Handler of ``resdist profile``; prints the tables and returns 0."""
    from ..deploy.profile import (
        format_int8_table,
        format_table,
        profile_models,
        write_profile_report,
    )

    kwargs: dict[str, Any] = {"num_classes": args.num_classes, "in_chans": args.in_chans}
    if args.stem is not None:
        kwargs["stem"] = args.stem
    if args.max_seconds is not None and args.max_seconds <= 0:
        raise DeployError(f"--max-seconds must be positive, got {args.max_seconds}")
    if args.int8 and args.no_latency:
        raise DeployError("--int8 times the quantised models; drop --no-latency")
    if not args.int8 and (args.calibration_data or args.data_dir):
        raise DeployError("--calibration-data and --data-dir are only used with --int8")
    if args.calibration_data is not None:
        check_choice("--calibration-data", args.calibration_data, DATASETS, "data set",
                     DeployError)
    result = profile_models(
        args.models, input_shape=(args.in_chans, args.input_size, args.input_size),
        model_kwargs=kwargs, batch_sizes=args.batch_sizes,
        threads=[t or None for t in args.threads], runs=args.runs, max_seconds=args.max_seconds,
        latency=not args.no_latency, int8=args.int8, runtimes=args.runtime,
        log=lambda msg: print(msg, file=sys.stderr, flush=True),
        calibration_data=args.calibration_data, data_dir=args.data_dir, opset=args.opset,
    )
    result.meta["command"] = "resdist " + shlex.join(sys.argv[1:]) if sys.argv else None
    print(format_table(result))
    if args.int8:
        print("\n" + format_int8_table(result))
    if result.runtimes is not None:
        from ..deploy.profile.report import runtime_report

        print("\n" + runtime_report(result))
    if args.out:
        write_profile_report(result, args.out)
        written = ", ".join(["profile.png", "profile.md"] + ["profile_int8.md"] * args.int8
                            + ["profile_runtimes.md"] * bool(args.runtime))
        print(f"\nwrote {Path(args.out) / 'profile.json'}, {written}")
    return 0
