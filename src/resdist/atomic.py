"""Writing files atomically: a temporary file in the same folder, fsync, then rename.

A reader, or a later run, sees the previous file or the complete new one, never a partial
file under the final name: a process killed mid-write, or a full disk, leaves only a temporary
``.NAME.PID.XXXX.tmp`` beside it, which :func:`remove_stale_temporaries` deletes once its
process is gone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries :func:`atomic_path` left beside ``path`` in processes that no
    longer run (killed mid-write); return what was removed."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp$")
    removed = []
    with contextlib.suppress(OSError):
        for p in path.parent.iterdir():
            m = pattern.match(p.name)
            if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write the whole file to; when the block ends
    without an exception, flush it to disk and rename it to ``path`` (readable like a file
    written with ``open()``). On any exception the temporary is removed and an existing ``path``
    stays as it was; the exception propagates."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                dir=path.parent)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # not mkstemp's 0600
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not e.filename:  # a failed write() names no file
            e.filename = str(path)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (:func:`atomic_path`), in UTF-8 whatever the
    locale (under ``LANG=C`` Python's default would be ASCII); a path Python could not decode
    is written back as the bytes it came from."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def write_failure(e: BaseException) -> str | None:
    """Why a write failed, for a one-line message: ``"no space left on the device"`` or the
    system's words for the :class:`OSError` behind ``e`` (itself, its cause or its context, as
    libraries report a failed write as their own error); ``None`` if no OSError is behind it."""
    err = next((x for x in (e, e.__cause__, e.__context__) if isinstance(x, OSError)), None)
    if err is None:
        return None
    return "no space left on the device" if err.errno == errno.ENOSPC else (
        err.strerror or str(err))
