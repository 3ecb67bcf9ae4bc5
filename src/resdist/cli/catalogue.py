"""``resdist presets``, ``resdist docs`` and ``resdist models``: what ships with resdist."""

from __future__ import annotations

import argparse
import fnmatch
from collections.abc import Callable, Sequence

from ..config import ConfigError


def add_parsers(sub) -> None:
    """Add ``presets``, ``docs`` and ``models``."""
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
                       "ImageNet-width ones, 3 input channels), then what timm:ARCH names "
                       "(timm's ResNets) are.")
    m.add_argument("pattern", nargs="?", default="*", metavar="PATTERN",
                   help="shell-style filter, e.g. 'plain*' (default: all)")
    m.set_defaults(func=cmd_models)


def _print_listing(names: Sequence[str], describe: Callable[[str], str]) -> None:
    width = max(map(len, names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe(name)}")


def cmd_presets(args: argparse.Namespace) -> int:
    """One line per preset, or one preset's YAML."""
    from ..presets import list_presets, preset_description, preset_text

    if args.name:
        print(preset_text(args.name), end="")
    else:
        _print_listing(list_presets(), preset_description)
    return 0


def cmd_docs(args: argparse.Namespace) -> int:
    """One line per guide, or one guide's markdown."""
    from ..guides import guide_text, guide_title, list_guides

    if args.name:
        print(guide_text(args.name), end="")
    else:
        _print_listing(list_guides(), guide_title)
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """One line per registered model: parameters and family."""
    from ..models import list_models, model_description, parameter_count

    names = list_models(args.pattern)
    show_timm = any(fnmatch.fnmatch(name, args.pattern) for name in TIMM_NAMES)
    if not names and not show_timm:
        raise ConfigError(f"no registered model matches {args.pattern!r}; `resdist models` "
                          "lists them all")
    _print_listing(names, lambda name: f"{parameter_count(name, in_chans=3):>11,} params  "
                   f"{model_description(name)}")
    if show_timm:
        print(("\n" if names else "") + TIMM_TEXT)
    return 0


#: timm names ``resdist models`` explains (timm builds them; they are not registered)
TIMM_NAMES = ("timm:resnet18", "timm:resnet34", "timm:resnet50", "timm:resnet18d",
              "timm:resnet34d", "timm:resnet50d", "timm:resnet26d", "timm:resnet101d")
TIMM_TEXT = """\
timm:ARCH names a ResNet of timm, PyTorch Image Models (pip install 'resdist[timm]'), rebuilt
with its own tensors (timm builds it, so it is not a registered name):
  timm:resnet18, timm:resnet34, timm:resnet50     teachers of plain18, plain34, plain50
  timm:resnet18d, timm:resnet34d, timm:resnet50d  teachers of plain18d, plain34d, plain50d
  other timm ResNets of these blocks (timm:resnet26d, timm:resnet101d, ...): teachers of a
  plain model whose stages match theirs; variants with other blocks are refused
--teacher timm:ARCH --teacher-weights TAG|FILE distils from one (TAG: timm's weights, such as
a1_in1k; FILE: .pth or .safetensors); --model timm:ARCH trains one on your own data
(`resdist docs training`, 'Train a timm teacher here')."""
