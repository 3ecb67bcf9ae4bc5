"""``resdist`` command line: a thin layer over the library.

    resdist train   --data fashion-mnist --model plain56 --method jointrd --teacher-checkpoint ...
    resdist eval    --checkpoint runs/x/last.pth --data fashion-mnist
    resdist export  --checkpoint runs/x/last.pth --format onnx --out plain56.onnx
    resdist profile resnet56 plain56
    resdist demo    (the main job: teacher, plain CE and JointRD on real Fashion-MNIST)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .config import DATASETS, METHODS, Config, ConfigError
from .errors import ResdistError

# flag -> config key; flags given on the command line override the YAML file, --set overrides both
_FLAG_KEYS = {
    "data": "data.name", "data_dir": "data.data_dir", "batch_size": "data.batch_size",
    "limit_train": "data.limit_train", "limit_test": "data.limit_test",
    "val_split": "data.val_split", "download": "data.download",
    "model": "model.name", "dirac": "model.dirac",
    "keep_downsample_shortcuts": "model.keep_downsample_shortcuts",
    "method": "distill.method", "teacher": "teacher.name",
    "teacher_checkpoint": "teacher.checkpoint", "teacher_weights": "teacher.weights",
    "lr": "optim.lr", "schedule": "optim.schedule", "epochs": "train.epochs",
    "out": "train.out", "seed": "train.seed", "device": "train.device", "amp": "train.amp",
    "channels_last": "train.channels_last", "compile": "train.compile",
    "sync_bn": "train.sync_bn", "resume": "train.resume",
}


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", choices=DATASETS, help="data set (default: fashion-mnist)")
    p.add_argument("--data-dir", help="folder holding the data set's files "
                   "(default: the data set's standard location)")
    p.add_argument("--download", action="store_true", default=None,
                   help="download through torchvision when the files are missing (needs network)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="resdist", description="Residual Distillation: plain CNNs trained to ResNet "
        "accuracy through a ResNet teacher, deployed without shortcuts.")
    parser.add_argument("--version", action="version", version=f"resdist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser("train", help="train a model (CE, KD, feature KD or JointRD)",
                       description="Train a network. A YAML --config gives defaults; flags "
                       "override it; --set section.key=value overrides both. The run directory "
                       "receives config.yaml, last.pth/best.pth and metrics.csv/jsonl.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    t.add_argument("--config", help="YAML preset (see configs/)")
    _add_data_args(t)
    t.add_argument("--model", help="network to train, e.g. plain56, resnet56, plain18")
    t.add_argument("--method", choices=METHODS, help="training objective (default: ce)")
    t.add_argument("--teacher", help="teacher model name (default: the student's ResNet)")
    t.add_argument("--teacher-checkpoint", help="resdist checkpoint of the trained teacher")
    t.add_argument("--teacher-weights",
                   help="torchvision weights name (e.g. DEFAULT) or state-dict file for the teacher")
    t.add_argument("--dirac", action="store_true", default=None,
                   help="Dirac-parametrised student convs")
    t.add_argument("--keep-downsample-shortcuts", action="store_true", default=None,
                   help="plain student keeps the stride-2 projection shortcuts (released code)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int, help="per process; global = this x world size")
    t.add_argument("--lr", type=float, help="base LR for the global batch")
    t.add_argument("--schedule", choices=["multistep", "step", "cosine", "onecycle", "constant"])
    t.add_argument("--limit-train", type=int, help="use only the first N training images")
    t.add_argument("--limit-test", type=int, help="use only the first N test images")
    t.add_argument("--val-split", type=float,
                   help="hold out this fraction (<1) or count of training images for validation")
    t.add_argument("--out", help="run directory")
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    t.add_argument("--amp", choices=["bf16", "fp16"], help="mixed precision")
    t.add_argument("--channels-last", action="store_true", default=None)
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the step")
    t.add_argument("--sync-bn", action="store_true", default=None, help="SyncBatchNorm under DDP")
    t.add_argument("--resume", action="store_true", default=None,
                   help="continue from OUT/last.pth")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set distill.dc=0.5 (repeatable)")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint (top-1/top-5)")
    e.add_argument("--checkpoint", required=True, help="a resdist checkpoint (or its run dir), "
                   "or an exported ONNX model (fp32 or INT8; run with ONNX Runtime)")
    _add_data_args(e)
    e.add_argument("--split", choices=["test", "val"], default="test")
    e.add_argument("--batch-size", type=int, default=None)
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the main job: ResNet, plain CE and plain JointRD on real "
                       "Fashion-MNIST, on the CPU, with a summary table")
    d.add_argument("--config", default=None, help="demo settings YAML (default: configs/demo.yaml"
                   " values built in)")
    d.add_argument("--data-dir", help="Fashion-MNIST folder (default: the Debian package's)")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("reproduce", help="accuracy evidence: teacher and plain students with "
                       "every method, several seeds, one table",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("suite", choices=["fashion-mnist"])
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    r.add_argument("--out", default="runs/reproduce", help="run directories (finished runs are "
                   "reused)")
    r.add_argument("--results", default="runs/reproduce",
                   help="where accuracy.json/.md/.png go")
    r.add_argument("--data-dir", help="Fashion-MNIST folder")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    r.set_defaults(func=cmd_reproduce)

    from .deploy.commands import add_export_parser, add_profile_parser

    add_export_parser(sub)
    add_profile_parser(sub)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's config: YAML file, then flags, then ``--set`` overrides."""
    cfg = Config.from_yaml(args.config) if args.config else Config()
    for flag, key in _FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
    if getattr(args, "no_progress", False):
        cfg.train.progress = False
    cfg.override(list(args.set))
    return cfg.validate()


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.trainer import train

    cfg = config_from_args(args)
    result = train(cfg)
    final = result.final
    if final and os.environ.get("RANK", "0") == "0":
        print(f"done: {result.run_dir}  test top-1 {final.get('test_top1', float('nan')):.2f}%  "
              f"train time {result.train_time_s:.0f}s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .deploy.onnx_eval import model_file_kind

    if model_file_kind(args.checkpoint) == "onnx":
        from .deploy.commands import run_onnx_eval

        return run_onnx_eval(args)
    from .data import build_data
    from .engine import evaluate, load_checkpoint, model_from_checkpoint
    from .engine.distributed import DistInfo, resolve_device

    ckpt = load_checkpoint(args.checkpoint)
    cfg = Config.from_dict(ckpt.get("config"))
    if args.data:
        cfg.data.name = args.data
    if args.data_dir:
        cfg.data.data_dir = args.data_dir
    if args.download:
        cfg.data.download = True
    if args.batch_size:
        cfg.data.eval_batch_size = args.batch_size
    if args.split == "test":
        cfg.data.val_split = 0.0
    device = resolve_device(args.device, DistInfo())
    data = build_data(cfg.data, device=device, seed=cfg.train.seed)
    model = model_from_checkpoint(ckpt).to(device)
    want = ckpt.get("model_kwargs", {}).get("num_classes")
    if want is not None and want != data.num_classes:
        raise ConfigError(f"checkpoint has {want} classes, data set {cfg.data.name!r} has "
                          f"{data.num_classes}")
    loader = data.test if args.split == "test" else data.val
    if loader is None:
        raise ConfigError("no validation split in this checkpoint's config (data.val_split = 0)")
    m = evaluate(model, loader)
    print(f"{ckpt['model_name']} on {cfg.data.name} {args.split} ({m['samples']} images): "
          f"top-1 {m['top1']:.2f}%  top-5 {m['top5']:.2f}%  loss {m['loss']:.4f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(config=args.config, data_dir=args.data_dir, out=args.out,
                    overrides=args.set)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .reproduce import format_markdown, run_suite

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    command = " ".join([
        "resdist reproduce", args.suite, "--seeds", *map(str, args.seeds),
        "--results", args.results, *(f"--set {o}" for o in args.set),
        *(["--data-dir", args.data_dir] if args.data_dir else []),
    ])
    summary = run_suite(args.suite, tuple(args.seeds), args.out, overrides, args.results,
                        command)
    print(format_markdown(summary))
    print(f"saved accuracy.json/.md/.png under {args.results}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ResdistError as e:
        print(f"resdist {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
