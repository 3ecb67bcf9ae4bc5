"""``resdist`` command line: a thin layer over the library, one module per command family.

    resdist train   --data fashion-mnist --model plain56 --method jointrd --teacher-checkpoint ...
    resdist train   --preset cifar100/plain18-jointrd [--dry-run]
    resdist eval    --checkpoint runs/x/last.pth --data fashion-mnist
    resdist export  --checkpoint runs/x/last.pth --format onnx --out plain56.onnx [--preprocess]
    resdist predict plain56.onnx shoe.png --topk 3
    resdist profile resnet56 plain56
    resdist presets | resdist models | resdist docs
    resdist demo    (the main job: teacher, plain CE and JointRD on real Fashion-MNIST)

Each module adds its commands' parsers (``add_parsers``) and holds their handlers, which parse,
call one library function and print: :mod:`.train` (train), :mod:`.evaluate` (eval),
:mod:`.experiments` (demo, reproduce), :mod:`.deploy` (export, predict, profile),
:mod:`.catalogue` (presets, docs, models); :mod:`.app` builds the parser and turns user errors
into one line and exit status 2.
"""

from .app import build_parser, main
from .train import config_from_args

__all__ = ["build_parser", "config_from_args", "main"]
