"""Argument types and the argument sets several commands share."""

from __future__ import annotations

import argparse

from ..config import DATASETS, Config

DEFAULTS = Config()  # the built-in defaults, shown in the help texts


def positive_int(text: str) -> int:
    """An argparse type: a positive integer, or a one-line usage error."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def threads(text: str) -> int:
    """Thread count: a positive integer, or ``all`` / ``0`` for every available core."""
    if text.lower() in ("all", "0"):
        return 0
    return positive_int(text)


def add_data_args(p: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """``--data``, ``--data-dir`` and ``--download``."""
    p.add_argument("--data", choices=DATASETS,
                   help="data set" + (f" (default: {DEFAULTS.data.name})" if defaults else
                                      " (default: the one the checkpoint was trained on)"))
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder holding the data set's files (default: the data set's standard "
                   "location, e.g. /usr/share/datasets/fashion-mnist, then ./data)")
    p.add_argument("--download", action="store_true", default=None,
                   help="download through torchvision when the files are missing (needs network)")


def add_set_arg(p: argparse.ArgumentParser | argparse._ArgumentGroup, help: str) -> None:
    """``--set KEY=VALUE`` (repeatable)."""
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)
