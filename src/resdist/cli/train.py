"""``resdist train``: flags over a preset or YAML file, then :func:`resdist.engine.trainer.train`."""

from __future__ import annotations

import argparse

from ..config import AMP_MODES, METHODS, SCHEDULES, STEMS, STUDENT_PARAMS, Config
from .args import DEFAULTS as _D
from .args import add_data_args, add_set_arg

# flag -> config key; flags given on the command line override the YAML file, --set overrides both
FLAG_KEYS = {
    "data": "data.name", "data_dir": "data.data_dir", "batch_size": "data.batch_size",
    "limit_train": "data.limit_train", "limit_test": "data.limit_test",
    "val_split": "data.val_split", "download": "data.download",
    "model": "model.name", "dirac": "model.dirac", "student_param": "model.student_param",
    "stem": "model.stem",
    "keep_downsample_shortcuts": "model.keep_downsample_shortcuts",
    "method": "distill.method", "teacher": "teacher.name",
    "teacher_checkpoint": "teacher.checkpoint", "teacher_weights": "teacher.weights",
    "lr": "optim.lr", "schedule": "optim.schedule", "epochs": "train.epochs",
    "out": "train.out", "seed": "train.seed", "device": "train.device", "amp": "train.amp",
    "channels_last": "train.channels_last", "compile": "train.compile",
    "sync_bn": "train.sync_bn", "resume": "train.resume", "overwrite": "train.overwrite",
    "accum_steps": "train.accum_steps", "save_best": "train.save_best",
    "best_weights_only": "train.best_weights_only", "log_every": "train.log_every",
}


def add_parsers(sub) -> None:
    """Add ``train``."""
    t = sub.add_parser(
        "train", help="train a model (CE, KD, feature KD or JointRD)",
        description="Train a network. A --preset (packaged recipe, see `resdist presets`) or "
        "--config (YAML file) gives the settings; flags override it; --set section.key=value "
        "overrides both. The defaults shown are the built-in ones, used when no preset or "
        "config sets the key. The run directory receives config.yaml, last.pth/best.pth "
        "(which record the input contract, see `resdist docs deploy`), metrics.csv/jsonl (per "
        "epoch), steps.jsonl (loss and LR every --log-every steps) and train.log (what the "
        "console showed).")
    src = t.add_mutually_exclusive_group()
    src.add_argument("--preset", metavar="NAME",
                     help="packaged recipe by name, e.g. cifar100/plain18-jointrd or demo "
                     "(`resdist presets` lists them)")
    src.add_argument("--config", metavar="FILE",
                     help="YAML config file, e.g. a run's config.yaml or your edited copy of a "
                     "preset (`resdist presets NAME` prints one)")
    add_data_args(t)
    _add_model_args(t.add_argument_group("networks and objective"))
    _add_schedule_args(t.add_argument_group("schedule and data size"))
    _add_run_args(t.add_argument_group("run, device and output"))
    t.set_defaults(func=cmd_train)


def _add_model_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--model", metavar="NAME",
                   help=f"network to train, e.g. plain56, resnet56, plain18 (default: "
                   f"{_D.model.name}); `resdist models` lists them")
    g.add_argument("--method", choices=METHODS,
                   help="training objective: ce (cross-entropy), kd (Hinton KD), feature-kd "
                   "(margin feature loss), jointrd (residual distillation through the teacher) "
                   f"(default: {_D.distill.method})")
    g.add_argument("--teacher", metavar="NAME",
                   help="teacher model name: a resdist model, or timm:ARCH for a timm ResNet "
                   "(needs resdist[timm]) (default: the student's ResNet, plain56 -> resnet56)")
    g.add_argument("--teacher-checkpoint", metavar="PATH",
                   help="resdist checkpoint of the trained teacher (methods kd, feature-kd, "
                   "jointrd)")
    g.add_argument("--teacher-weights", metavar="NAME|FILE",
                   help="teacher weights: a torchvision weights name (e.g. DEFAULT), a timm "
                   "tag for a timm:ARCH teacher (e.g. a1_in1k), or a state-dict file (.pth, "
                   ".safetensors)")
    g.add_argument("--stem", choices=STEMS, default=None,
                   help="first layers of student and teacher: imagenet (7x7 stride-2 conv and a "
                   "max-pool: /4) or cifar (one 3x3 stride-1 conv) for small images such as "
                   "32x32; a torchvision teacher state dict keeps its 7x7 stem, so with --stem "
                   "cifar its conv1 does not fit; deep: ResNet-D's three 3x3 convs and a "
                   "max-pool (default: the model's own, imagenet for ResNet-18/34/50, deep for "
                   "ResNet-18/34/50-D, cifar for the thin nets)")
    g.add_argument("--student-param", choices=STUDENT_PARAMS, default=None,
                   help="how the student's convs train, all folded into plain convs at export: "
                   "plain; dirac (alpha*I + beta*W); repvgg (every 3x3 conv as 3x3+BN, 1x1+BN "
                   "and identity+BN branches, RepVGG-style) (default: plain)")
    g.add_argument("--dirac", action="store_true", default=None,
                   help="the same as --student-param dirac")
    g.add_argument("--keep-downsample-shortcuts", action="store_true", default=None,
                   help="plain student keeps the stride-2 projection shortcuts (released code)")


def _add_schedule_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--epochs", type=int, metavar="N",
                   help="passes over the training set; the LR schedule and JointRD's decay "
                   f"factor m(e) are stretched over them (default: {_D.train.epochs})")
    g.add_argument("--batch-size", type=int, metavar="B",
                   help="images per step and process; the global batch is this x the number of "
                   f"processes (default: {_D.data.batch_size})")
    g.add_argument("--lr", type=float, metavar="LR",
                   help=f"base learning rate for the global batch (default: {_D.optim.lr})")
    g.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule: multistep (x optim.gamma at the optim.milestones "
                   "fractions of the run), step (x gamma every optim.step_size epochs), cosine "
                   "(down to 0), onecycle (warm-up then annealing), constant "
                   f"(default: {_D.optim.schedule})")
    g.add_argument("--limit-train", type=int, metavar="N",
                   help="use only N training images: the first N of Fashion-MNIST/CIFAR/"
                   "synthetic, N evenly spaced ones of an ImageFolder (default: all)")
    g.add_argument("--limit-test", type=int, metavar="N",
                   help="use only N test images, chosen as for --limit-train (default: all)")
    g.add_argument("--val-split", type=float, metavar="F",
                   help="hold out this fraction (<1) or count (>=1) of the training images for "
                   "validation; best.pth then follows validation accuracy (default: 0, none)")
    g.add_argument("--accum-steps", type=int, metavar="K",
                   help="micro-batches per optimiser step (gradient accumulation); the global "
                   "batch is batch-size x processes x K "
                   f"(default: {_D.train.accum_steps})")


def _add_run_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--out", metavar="DIR",
                   help=f"run directory (default: {_D.train.out})")
    g.add_argument("--seed", type=int, metavar="S",
                   help="seed of weight initialisation, shuffling and augmentation; the same "
                   f"seed repeats a CPU run exactly (default: {_D.train.seed})")
    g.add_argument("--device", metavar="DEV",
                   help="auto (CUDA when available, else CPU), cpu, cuda, cuda:N or mps "
                   f"(default: {_D.train.device})")
    g.add_argument("--amp", choices=AMP_MODES,
                   help="mixed-precision autocast: bf16 (CPU or GPU), fp16 (GPU, with loss "
                   "scaling), auto (bf16 on GPUs that support it, else fp16; float32 on CPU) "
                   "(default: off, float32)")
    g.add_argument("--channels-last", action="store_true", default=None,
                   help="keep weights and images in NHWC memory layout: faster convolutions on "
                   "CPUs and tensor-core GPUs, same results (default: off)")
    g.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the training step (CPU needs a C++ compiler; the first "
                   "steps are slow) (default: off)")
    g.add_argument("--sync-bn", action="store_true", default=None,
                   help="BatchNorm statistics over the global batch under torchrun (default: "
                   "per process)")
    g.add_argument("--resume", action="store_true", default=None,
                   help="continue from OUT/last.pth (optimiser, schedule and RNG included)")
    g.add_argument("--overwrite", action="store_true", default=None,
                   help="OUT already holds a run: move its files to OUT.old-<time> and start anew")
    g.add_argument("--save-best", action=argparse.BooleanOptionalAction, default=None,
                   help="also keep best.pth (the epoch with the highest validation, else test, "
                   "top-1) beside last.pth; --no-save-best writes last.pth only, half the disk "
                   "(default: on)")
    g.add_argument("--best-weights-only", action="store_true", default=None,
                   help="best.pth holds the weights and input contract only (no optimiser or "
                   "RNG state: about half the size; last.pth keeps them for --resume) "
                   "(default: off)")
    g.add_argument("--log-every", type=int, metavar="N",
                   help="every N optimiser steps, append the training loss and LR to "
                   "OUT/steps.jsonl and TensorBoard; 0: per epoch only "
                   f"(default: {_D.train.log_every})")
    g.add_argument("--no-progress", action="store_true",
                   help="no progress bar, only one line per epoch")
    add_set_arg(g, "override any config key, e.g. --set distill.dc=0.5 (repeatable; "
                "`--dry-run` shows every key)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the resolved config (YAML) and the model summary (parameters, "
                   "MACs, per-stage output shapes), load and check the teacher's checkpoint or "
                   "weights file against the student and the data's classes, then exit without "
                   "reading images, training or writing anything")


def config_from_args(args: argparse.Namespace) -> Config:
    """The run's config: preset or YAML file, then flags, then ``--set`` overrides."""
    if getattr(args, "preset", None):
        from ..presets import load_preset

        cfg = load_preset(args.preset)
    else:
        cfg = Config.from_yaml(args.config) if args.config else Config()
    _teacher_flags_replace(cfg, args)
    for flag, key in FLAG_KEYS.items():
        value = getattr(args, flag, None)
        if value is not None:
            section, name = key.split(".")
            setattr(getattr(cfg, section), name, value)
    if getattr(args, "no_progress", False):
        cfg.train.progress = False
    cfg.override(list(args.set))
    return cfg.validate()


def _teacher_flags_replace(cfg: Config, args: argparse.Namespace) -> None:
    """A teacher given by flag replaces the preset's or YAML file's: ``--teacher-checkpoint``
    drops their teacher name and weights (a checkpoint names its own network), and
    ``--teacher-weights`` their checkpoint, unless those flags are given too."""
    if getattr(args, "teacher_checkpoint", None) is not None:
        if getattr(args, "teacher", None) is None:
            cfg.teacher.name = None
        if getattr(args, "teacher_weights", None) is None:
            cfg.teacher.weights = None
    elif getattr(args, "teacher_weights", None) is not None:
        cfg.teacher.checkpoint = None


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or, with ``--dry-run``, describe the run) and print where it went."""
    cfg = config_from_args(args)
    if args.dry_run:
        from ..engine.dry_run import dry_run_text

        print(dry_run_text(cfg))
        return 0
    from ..engine.trainer import train

    train(cfg)  # its last line says where the run went
    return 0
