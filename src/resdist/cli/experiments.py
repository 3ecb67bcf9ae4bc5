"""``resdist demo`` and ``resdist reproduce``: the packaged experiments of
:mod:`resdist.experiments`."""

from __future__ import annotations

import argparse

from ..experiments.suites import SUITES
from .args import add_set_arg


def add_parsers(sub) -> None:
    """Add ``demo`` and ``reproduce``."""
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
    add_set_arg(d, "override a config key of every run (repeatable)")
    d.set_defaults(func=cmd_demo)

    r = sub.add_parser("reproduce", help="accuracy evidence: teacher and plain students with "
                       "every method, several seeds, one table",
                       description="Train the teacher and the plain student with every method "
                       "for each seed (fashion-mnist: its own preset, 20k images x 2 "
                       "epochs per run; fashion-mnist-long: its own preset, all 60k images x 3 "
                       "epochs per run; cifar10: the cifar10-suite preset on real CIFAR-10, "
                       "--data-dir DIR holding cifar-10-batches-py/; tiny: MLPerf Tiny's "
                       "ResNet-8 and plain students near convergence, the tiny-suite preset on "
                       "the same data). Each finished run is recorded under RESULTS/runs/ and "
                       "reused by later invocations, here or on another machine; the report "
                       "(accuracy[_long|_cifar10|_tiny].json/.md/.png) names the machines that "
                       "contributed.")
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
                   help="data folder: Fashion-MNIST's (default: the standard locations), or "
                   "for cifar10 and tiny the folder holding cifar-10-batches-py/")
    r.add_argument("--report-only", action="store_true",
                   help="train nothing: write the report from the runs recorded under "
                   "--results, listing those not recorded yet")
    r.add_argument("--runs", nargs="+", metavar="RUN",
                   help="train only these runs of each seed (e.g. resnet8-ce plain8-jointrd; "
                   "a wrong name lists the suite's runs), to split a suite over machines by run "
                   "as --seeds splits it by seed; the other runs are reported when recorded "
                   "(default: every run)")
    add_set_arg(r, "override a config key of every run (repeatable)")
    r.set_defaults(func=cmd_reproduce)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo; it prints its own progress and summary."""
    from ..experiments.demo import run_demo

    return run_demo(config=args.config, data_dir=args.data_dir, out=args.out,
                    overrides=args.set, train_teacher=args.train_teacher)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run (or finish) a suite and print its report."""
    from ..experiments.suites import format_markdown, run_suite

    overrides = list(args.set)
    if args.data_dir:
        overrides.append(f"data.data_dir={args.data_dir}")
    command = " ".join([
        "resdist reproduce", args.suite, "--seeds", *map(str, args.seeds),
        "--results", args.results, *(f"--set {o}" for o in args.set),
        *(["--data-dir", args.data_dir] if args.data_dir else []),
    ])
    try:
        summary = run_suite(args.suite, tuple(args.seeds), args.out, overrides, args.results,
                            command, report_only=args.report_only, runs=args.runs)
    except KeyboardInterrupt as e:
        raise type(e)(f"the finished runs and their records in {args.results} are kept; run "
                      "the same command again to go on (an unfinished run continues from its "
                      "last checkpoint)") from None
    print(format_markdown(summary))
    print(f"saved {SUITES[args.suite].report}.json/.md/.png under {args.results}; run records "
          f"under {args.results}/runs/{args.suite}")
    return 0
