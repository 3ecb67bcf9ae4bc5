"""``resdist`` command line: a thin layer over the library.

    resdist train   --data fashion-mnist --model plain56 --method jointrd --teacher-checkpoint ...
    resdist train   --preset cifar100/plain18-jointrd [--dry-run]
    resdist eval    --checkpoint runs/x/last.pth --data fashion-mnist
    resdist export  --checkpoint runs/x/last.pth --format onnx --out plain56.onnx [--preprocess]
    resdist predict plain56.onnx shoe.png --topk 3
    resdist profile resnet56 plain56
    resdist presets | resdist models | resdist docs
    resdist demo    (the main job: teacher, plain CE and JointRD on real Fashion-MNIST)
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .config import AMP_MODES, DATASETS, METHODS, SCHEDULES, STEMS, Config, ConfigError
from .errors import ResdistError
from .experiments.suites import SUITES

# flag -> config key; flags given on the command line override the YAML file, --set overrides both
_FLAG_KEYS = {
    "data": "data.name", "data_dir": "data.data_dir", "batch_size": "data.batch_size",
    "limit_train": "data.limit_train", "limit_test": "data.limit_test",
    "val_split": "data.val_split", "download": "data.download",
    "model": "model.name", "dirac": "model.dirac", "stem": "model.stem",
    "keep_downsample_shortcuts": "model.keep_downsample_shortcuts",
    "method": "distill.method", "teacher": "teacher.name",
    "teacher_checkpoint": "teacher.checkpoint", "teacher_weights": "teacher.weights",
    "lr": "optim.lr", "schedule": "optim.schedule", "epochs": "train.epochs",
    "out": "train.out", "seed": "train.seed", "device": "train.device", "amp": "train.amp",
    "channels_last": "train.channels_last", "compile": "train.compile",
    "sync_bn": "train.sync_bn", "resume": "train.resume", "overwrite": "train.overwrite",
    "accum_steps": "train.accum_steps", "save_best": "train.save_best",
}


_D = Config()  # the built-in defaults, shown in the help texts


def _add_data_args(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    p.add_argument("--data", choices=DATASETS,
                   help="data set" + (f" (default: {_D.data.name})" if defaults else
                                      " (default: the one the checkpoint was trained on)"))
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder holding the data set's files (default: the data set's standard "
                   "location, e.g. /usr/share/datasets/fashion-mnist, then ./data)")
    p.add_argument("--download", action="store_true", default=None,
                   help="download through torchvision when the files are missing (needs network)")


def _add_train_parser(sub) -> None:
    t = sub.add_parser(
        "train", help="train a model (CE, KD, feature KD or JointRD)",
        description="Train a network. A --preset (packaged recipe, see `resdist presets`) or "
        "--config (YAML file) gives the settings; flags override it; --set section.key=value "
        "overrides both. The defaults shown are the built-in ones, used when no preset or "
        "config sets the key. The run directory receives config.yaml, last.pth/best.pth "
        "(which record the input contract, see `resdist docs deploy`) and metrics.csv/jsonl.")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--preset", metavar="NAME",
                     help="packaged recipe by name, e.g. cifar100/plain18-jointrd or demo "
                     "(`resdist presets` lists them)")
    src.add_argument("--config", metavar="FILE",
                     help="YAML config file, e.g. a run's config.yaml or your edited copy of a "
                     "preset (`resdist presets NAME` prints one)")
    _add_data_args(t)
    t.add_argument("--model", metavar="NAME",
                   help=f"network to train, e.g. plain56, resnet56, plain18 (default: "
                   f"{_D.model.name}); `resdist models` lists them")
    t.add_argument("--method", choices=METHODS,
                   help="training objective: ce (cross-entropy), kd (Hinton KD), feature-kd "
                   "(margin feature loss), jointrd (residual distillation through the teacher) "
                   f"(default: {_D.distill.method})")
    t.add_argument("--teacher", metavar="NAME",
                   help="teacher model name: a resdist model, or timm:ARCH for a timm ResNet "
                   "(needs resdist[timm]) (default: the student's ResNet, plain56 -> resnet56)")
    t.add_argument("--teacher-checkpoint", metavar="PATH",
                   help="resdist checkpoint of the trained teacher (methods kd, feature-kd, "
                   "jointrd)")
    t.add_argument("--teacher-weights", metavar="NAME|FILE",
                   help="teacher weights: a torchvision weights name (e.g. DEFAULT), a timm "
                   "tag for a timm:ARCH teacher (e.g. a1_in1k), or a state-dict file (.pth, "
                   ".safetensors)")
    t.add_argument("--stem", choices=STEMS, default=None,
                   help="first layers of student and teacher: imagenet (7x7 stride-2 conv and a "
                   "max-pool: /4) or cifar (one 3x3 stride-1 conv) for small images such as "
                   "32x32; a torchvision teacher state dict keeps its 7x7 stem, so with --stem "
                   "cifar its conv1 does not fit; deep: ResNet-D's three 3x3 convs and a "
                   "max-pool (default: the model's own, imagenet for ResNet-18/34/50, deep for "
                   "ResNet-18/34/50-D, cifar for the thin nets)")
    t.add_argument("--dirac", action="store_true", default=None,
                   help="Dirac-parametrised student convs, alpha*I + beta*W (folded away at export)")
    t.add_argument("--keep-downsample-shortcuts", action="store_true", default=None,
                   help="plain student keeps the stride-2 projection shortcuts (released code)")
    t.add_argument("--epochs", type=int, metavar="N",
                   help="passes over the training set; the LR schedule and JointRD's decay "
                   f"factor m(e) are stretched over them (default: {_D.train.epochs})")
    t.add_argument("--batch-size", type=int, metavar="B",
                   help="images per step and process; the global batch is this x the number of "
                   f"processes (default: {_D.data.batch_size})")
    t.add_argument("--lr", type=float, metavar="LR",
                   help=f"base learning rate for the global batch (default: {_D.optim.lr})")
    t.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule: multistep (x optim.gamma at the optim.milestones "
                   "fractions of the run), step (x gamma every optim.step_size epochs), cosine "
                   "(down to 0), onecycle (warm-up then annealing), constant "
                   f"(default: {_D.optim.schedule})")
    t.add_argument("--limit-train", type=int, metavar="N",
                   help="use only N training images: the first N of Fashion-MNIST/CIFAR/"
                   "synthetic, N evenly spaced ones of an ImageFolder (default: all)")
    t.add_argument("--limit-test", type=int, metavar="N",
                   help="use only N test images, chosen as for --limit-train (default: all)")
    t.add_argument("--val-split", type=float, metavar="F",
                   help="hold out this fraction (<1) or count (>=1) of the training images for "
                   "validation; best.pth then follows validation accuracy (default: 0, none)")
    t.add_argument("--out", metavar="DIR",
                   help=f"run directory (default: {_D.train.out})")
    t.add_argument("--seed", type=int, metavar="S",
                   help="seed of weight initialisation, shuffling and augmentation; the same "
                   f"seed repeats a CPU run exactly (default: {_D.train.seed})")
    t.add_argument("--device", metavar="DEV",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N "
                   f"(default: {_D.train.device})")
    t.add_argument("--amp", choices=AMP_MODES,
                   help="mixed-precision autocast: bf16 (CPU or GPU), fp16 (GPU, with loss "
                   "scaling), auto (bf16 on GPUs that support it, else fp16; float32 on CPU) "
                   "(default: off, float32)")
    t.add_argument("--accum-steps", type=int, metavar="K",
                   help="micro-batches per optimiser step (gradient accumulation); the global "
                   "batch is batch-size x processes x K "
                   f"(default: {_D.train.accum_steps})")
    t.add_argument("--channels-last", action="store_true", default=None,
                   help="keep weights and images in NHWC memory layout: faster convolutions on "
                   "CPUs and tensor-core GPUs, same results (default: off)")
    t.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step (CPU needs a C++ compiler; the first "
                   "steps are slow) (default: off)")
    t.add_argument("--sync-bn", action="store_true", default=None,
                   help="BatchNorm statistics over the global batch under torchrun (default: "
                   "per process)")
    t.add_argument("--resume", action="store_true", default=None,
                   help="continue from OUT/last.pth (optimiser, schedule and RNG included)")
    t.add_argument("--overwrite", action="store_true", default=None,
                   help="OUT already holds a run: move its files to OUT.old-<time> and start anew")
    t.add_argument("--save-best", action=argparse.BooleanOptionalAction, default=None,
                   help="also keep best.pth (the epoch with the highest validation, else test, "
                   "top-1) beside last.pth; --no-save-best writes last.pth only, half the disk "
                   "(default: on)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bar, only one line per epoch")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set distill.dc=0.5 (repeatable; "
                   "`--dry-run` shows every key)")
    t.add_argument("--dry-run", action="store_true",
                   help="print the resolved config (YAML) and the model summary (parameters, "
                   "MACs, per-stage output shapes), then exit without reading data, training or "
                   "writing anything")
    t.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="resdist", description="Residual Distillation: plain CNNs trained to ResNet "
        "accuracy through a ResNet teacher, deployed without shortcuts. Each command's "
        "--help says what it takes; `resdist docs` lists the guides (method, training, "
        "deployment, faults, results) and `resdist docs NAME` prints one.")
    parser.add_argument("--version", action="version", version=f"resdist {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: RESDIST_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    _add_train_parser(sub)

    e = sub.add_parser("eval", help="evaluate a checkpoint or an ONNX model (top-1/top-5)",
                       description="Evaluate a checkpoint on the test split (or its run's "
                       "validation split) of the data set it was trained on, or another one.")
    e.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a resdist checkpoint (or its run folder, for last.pth), or an exported "
                   "ONNX model (fp32 or INT8, run with ONNX Runtime)")
    _add_data_args(e, defaults=False)
    e.add_argument("--trust-torchscript", action="store_true",
                   help="allow a TorchScript PATH (from resdist export): loading it RUNS THE "
                   "CODE THE FILE CARRIES, so only for files whose source you trust")
    e.add_argument("--model", metavar="NAME", default=None,
                   help="the file is a plain state dict of this registry network (e.g. a "
                   "torchvision ResNet's, as --teacher-weights takes), built for --data's "
                   "classes and channels; --set model.stem=... if needed")
    e.add_argument("--split", choices=["test", "val"], default="test",
                   help="test set, or the validation split the run held out (default: test)")
    e.add_argument("--limit-test", type=int, default=None, metavar="N",
                   help="score only the first N test images (default: the full test set)")
    e.add_argument("--batch-size", type=int, default=None, metavar="B",
                   help="evaluation batch size (default: the run's data.eval_batch_size)")
    e.add_argument("--device", default="auto", metavar="DEV",
                   help="auto, cpu, cuda or cuda:N (default: auto)")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the checkpoint's config, e.g. --set "
                   "data.data_dir=/data (repeatable)")
    e.set_defaults(func=cmd_eval)

    d = sub.add_parser("demo", help="the main job: ResNet, plain CE and plain JointRD on real "
                       "Fashion-MNIST, on the CPU, with a summary table",
                       description="Evaluate the ResNet teacher, then train its plain "
                       "counterpart with cross-entropy and the plain student with JointRD "
                       "through it, with the settings of the packaged demo preset (`resdist "
                       "presets demo`), and print a table. The teacher is the packaged "
                       "pretrained ResNet-32 (the seed-0 teacher of `resdist reproduce "
                       "fashion-mnist-long`), or, with --config, the config's "
                       "teacher.checkpoint; without either, or with --train-teacher, it is "
                       "trained first on the same settings.")
    d.add_argument("--config", default=None, metavar="FILE",
                   help="settings YAML (default: the packaged demo preset)")
    d.add_argument("--data-dir", metavar="DIR",
                   help="Fashion-MNIST folder (default: /usr/share/datasets/fashion-mnist, then "
                   "./data)")
    d.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="where the run directories and summary.md go (default: runs/demo)")
    d.add_argument("--train-teacher", action="store_true",
                   help="train the ResNet teacher too instead of using a pretrained one")
    d.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of every run (repeatable)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("reproduce", help="accuracy evidence: teacher and plain students with "
                       "every method, several seeds, one table",
                       description="Train the teacher and the plain student with every method "
                       "for each seed (fashion-mnist: its own preset, 20k images x 2 "
                       "epochs per run; fashion-mnist-long: its own preset, all 60k images x 3 "
                       "epochs per run; cifar10: the cifar10-suite preset on real CIFAR-10, "
                       "--data-dir DIR holding cifar-10-batches-py/). Each finished run is recorded under RESULTS/runs/ "
                       "and reused by later invocations, here or on another machine; the report "
                       "(accuracy[_long|_cifar10].json/.md/.png) names the machines that contributed.")
    r.add_argument("suite", choices=list(SUITES), help="which suite to run")
    r.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="S",
                   help="seeds; students of seed s learn from the teacher of seed s "
                   "(default: 0 1 2)")
    r.add_argument("--out", default="runs/reproduce", metavar="DIR",
                   help="run directories (DIR/SUITE/seedS/RUN); an interrupted run resumes "
                   "(default: runs/reproduce)")
    r.add_argument("--results", default="runs/reproduce/results", metavar="DIR",
                   help="run records (DIR/runs/SUITE/) and the report "
                   "(default: runs/reproduce/results)")
    r.add_argument("--data-dir", metavar="DIR",
                   help="Fashion-MNIST folder (default: the standard locations)")
    r.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key of every run (repeatable)")
    r.set_defaults(func=cmd_reproduce)

    from .deploy.commands import add_export_parser, add_predict_parser, add_profile_parser

    add_export_parser(sub)
    add_predict_parser(sub)
    add_profile_parser(sub)

    ps = sub.add_parser("presets", help="list the packaged recipes (for train --preset)",
                        description="List the packaged presets with one line each, or print "
                        "one preset's YAML (to copy and edit for --config).")
    ps.add_argument("name", nargs="?", metavar="NAME",
                    help="print this preset's YAML instead of the list")
    ps.set_defaults(func=cmd_presets)

    g = sub.add_parser("docs", help="list the guides, or print one",
                       description="List the user guides shipped with resdist, one line each, "
                       "or print one guide's markdown.")
    g.add_argument("name", nargs="?", metavar="NAME",
                   help="print this guide (e.g. training, deploy) instead of the list")
    g.set_defaults(func=cmd_docs)

    m = sub.add_parser("models", help="list the registered networks (for --model)",
                       description="List the model registry: one line per name with its "
                       "family and parameter count (10 classes for thin nets, 1000 for the "
                       "ImageNet-width ones, 3 input channels).")
    m.add_argument("pattern", nargs="?", default="*", metavar="PATTERN",
                   help="shell-style filter, e.g. 'plain*' (default: all)")
    m.set_defaults(func=cmd_models)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's config: YAML file, then flags, then ``--set`` overrides."""
    if getattr(args, "preset", None):
        from .presets import load_preset

        cfg = load_preset(args.preset)
    else:
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


def dry_run_text(cfg: Config) -> str:
    """The resolved config as YAML and a summary of the model it trains (no data is read)."""
    from .data.contract import contract_for_data
    from .engine.build import TEACHER_METHODS, model_kwargs
    from .models import create_model, teacher_name_for
    from .models.summary import summarize_model

    d = cfg.data
    synthetic = d.name == "synthetic"
    contract = contract_for_data(
        d.name, in_chans=d.synthetic_channels if synthetic else None,
        image_size=d.synthetic_size if synthetic else (d.image_size if d.name == "imagefolder"
                                                      else None),
        num_classes=d.synthetic_classes if synthetic else None, data_dir=d.data_dir,
    )
    num_classes = len(contract.class_names) or 1000
    model = create_model(cfg.model.name,
                         **model_kwargs(cfg.model, num_classes, contract.input_shape[0]))
    lines = [cfg.to_yaml().rstrip(), "", f"model {cfg.model.name}, trained with "
             f"{cfg.distill.method}"]
    if cfg.distill.method in TEACHER_METHODS:
        name = cfg.teacher.name or teacher_name_for(cfg.model.name)
        if cfg.teacher.checkpoint or cfg.teacher.weights:
            lines[-1] += f" through teacher {name} ({cfg.teacher.checkpoint or cfg.teacher.weights})"
        elif cfg.teacher.train:
            lines[-1] += f" through teacher {name} (co-trained from random weights)"
        else:
            lines[-1] += ("; no teacher given: the run would stop, pass --teacher-checkpoint or "
                          "--teacher-weights (or --set teacher.train=true)")
    lines.append(summarize_model(model, contract.input_shape).format())
    lines.append(f"run directory (not created): {cfg.train.out}")
    return "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from .engine.trainer import train

    cfg = config_from_args(args)
    if args.dry_run:
        print(dry_run_text(cfg))
        return 0
    result = train(cfg)
    final = result.final
    if final and os.environ.get("RANK", "0") == "0":
        print(f"done: {result.run_dir}  test top-1 {final.get('test_top1', float('nan')):.2f}%  "
              f"train time {result.train_time_s:.0f}s")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .deploy.onnx_eval import model_file_kind
    from .safe_load import is_torchscript

    if model_file_kind(args.checkpoint) == "onnx" or is_torchscript(args.checkpoint):
        from .deploy.commands import run_onnx_eval

        return run_onnx_eval(args)
    from .engine.evaluation import evaluate_checkpoint

    score = evaluate_checkpoint(
        args.checkpoint, data=args.data, data_dir=args.data_dir, download=args.download,
        batch_size=args.batch_size, limit_test=args.limit_test, overrides=args.set,
        split=args.split, device=args.device, model=args.model)
    print(score.line())
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .experiments.demo import run_demo

    return run_demo(config=args.config, data_dir=args.data_dir, out=args.out,
                    overrides=args.set, train_teacher=args.train_teacher)


def cmd_reproduce(args: argparse.Namespace) -> int:
    from .experiments.suites import format_markdown, run_suite

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
    stem = SUITES[args.suite].report
    print(f"saved {stem}.json/.md/.png under {args.results}; run records under "
          f"{args.results}/runs/{args.suite}")
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from .presets import list_presets, preset_description, preset_text

    if args.name:
        print(preset_text(args.name), end="")
        return 0
    names = list_presets()
    width = max(map(len, names))
    for name in names:
        print(f"{name:<{width}}  {preset_description(name)}")
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    from .guides import guide_text, guide_title, list_guides

    if args.name:
        print(guide_text(args.name), end="")
        return 0
    names = list_guides()
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {guide_title(name)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    import torch

    from .models import create_model, list_models, model_description

    names = list_models(args.pattern)
    if not names:
        raise ConfigError(f"no registered model matches {args.pattern!r}; `resdist models` "
                          "lists them all")
    width = max(map(len, names))
    for name in names:
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_model(name, in_chans=3)
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<{width}}  {params / 1e6:6.2f} M params  {model_description(name)}")
    return 0


def _os_error_line(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    return f"{e.strerror or e}:{where}; check that the path exists and that you may use it"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error is one line on stderr and exit status 2 (``--debug`` or
    ``RESDIST_DEBUG=1`` re-raises it with its traceback)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("RESDIST_DEBUG", "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more is written
        return 0
    except (ResdistError, OSError) as e:
        if debug:
            raise
        msg = _os_error_line(e) if isinstance(e, OSError) else str(e)
        msg = " ".join(msg.split())  # one line, whatever the message
        print(f"resdist {args.command}: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
