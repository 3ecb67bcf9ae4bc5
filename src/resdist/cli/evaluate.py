"""``resdist eval``: :func:`resdist.deploy.evaluate.evaluate_file` on any model file."""

from __future__ import annotations

import argparse

from .args import add_data_args, add_set_arg


def add_parsers(sub) -> None:
    """Add ``eval``."""
    e = sub.add_parser("eval", help="evaluate a checkpoint or an ONNX model (top-1/top-5)",
                       description="Evaluate a checkpoint on the test split (or its run's "
                       "validation split) of the data set it was trained on, or another one.")
    e.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a resdist checkpoint (or its run folder, for last.pth), or a file "
                   "from resdist export (ONNX fp32 or INT8, safetensors; TorchScript with "
                   "--trust-torchscript); its input contract says how the images are prepared "
                   "(printed on a second line)")
    add_data_args(e, defaults=False)
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
                   help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    add_set_arg(e, "override a key of the checkpoint's config, e.g. --set "
                "data.data_dir=/data (repeatable)")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    """Score the file; print the score and the preprocessing applied."""
    from ..deploy.evaluate import evaluate_file

    score = evaluate_file(
        args.checkpoint, data=args.data, data_dir=args.data_dir, download=bool(args.download),
        batch_size=args.batch_size, limit_test=args.limit_test, overrides=args.set,
        split=args.split, device=args.device, model=args.model,
        trust_torchscript=args.trust_torchscript)
    print(score.line())
    if score.preprocessing:
        print(score.preprocessing)
    return 0
