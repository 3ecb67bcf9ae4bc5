"""The ``resdist`` parser and entry point: every command family adds its parsers; a user error
becomes one line on stderr and exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's ``KeyboardInterrupt`` so that every ``finally`` and
    cleanup runs (temporary files removed, the run folder's lock released) before the exit."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while a command runs (main thread only, and only
    where nobody else handles SIGTERM)."""
    mine = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL)
    if mine:
        signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        if mine:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _printable_output() -> None:
    """Under ``LANG=C`` (an ASCII terminal) a non-ASCII file or class name is printed with
    backslash escapes instead of ending the command in ``UnicodeEncodeError``."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(ValueError, OSError):
                stream.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error is one line on stderr and exit status 2 (``--debug`` or
    ``RESDIST_DEBUG=1`` re-raises it with its traceback). Ctrl-C and SIGTERM stop it cleanly:
    one line that says what is kept, exit status 130 or 143."""
    _printable_output()
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = args.debug or os.environ.get("RESDIST_DEBUG", "") not in ("", "0")
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"{how}; {e}" if str(e) else how, file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
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
