"""The ``resdist`` parser and entry point: every command family adds its parsers; a user error
becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import errno
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from ..errors import ResdistError
from . import catalogue, deploy, evaluate, experiments, train


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``PROG: error: ...; see PROG
    --help``, exit status 2) instead of argparse's usage block followed by the message; its
    sub-command parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        """Print the one line and exit with status 2."""
        msg = " ".join(message.split())
        self.exit(2, f"{self.prog}: error: {msg}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    """The full ``resdist`` parser, one sub-command per job."""
    from .. import __version__

    parser = OneLineParser(
        prog="resdist", description="Residual Distillation: plain CNNs trained to ResNet "
        "accuracy through a ResNet teacher, deployed without shortcuts. Each command's "
        "--help says what it takes; `resdist docs` lists the guides (method, training, "
        "deployment, faults, results) and `resdist docs NAME` prints one.")
    parser.add_argument("--version", action="version", version=f"resdist {__version__}",
                        help="print the version and exit")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error (also: RESDIST_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for family in (train, evaluate, experiments, deploy, catalogue):
        family.add_parsers(sub)
    return parser


def _os_error_line(e: OSError) -> str:
    where = f" {e.filename}" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"cannot write{where or ' a file'}: no space left on the device; make room and " \
            "run the command again"
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
