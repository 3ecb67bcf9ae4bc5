"""A run directory holds one run: checks, the lock, ``--overwrite`` and stale temporary files.

:func:`open_run_dir` runs before anything is written (rank 0 only under DDP):

* ``out`` must be a folder that can be created and written;
* a lock file ``out/.lock`` is held with ``fcntl.flock`` for the life of the run, so a second
  training into the same folder refuses; the kernel drops the lock whenever the holder exits
  (also on ``kill -9``), so a lock file left by a dead process is simply taken over;
* a folder that already holds a run (``config.yaml``, ``last.pth``, ``best.pth`` or metrics)
  is refused unless the run is resumed (``--resume``) or replaced (``--overwrite``: the old
  run's files are moved, not deleted, to the sibling folder ``out.old-<YYYYmmdd-HHMMSS>``);
* ``--resume`` with any setting that changes what the run computes (every key but those of
  :data:`resdist.config.PLACE_KEYS`: model, method, data, LR, schedule, seed, batch size,
  augmentation, ...; ``train.epochs`` may change) other than the saved ``config.yaml``'s is
  refused, naming the key, before anything in the folder changes, so ``config.yaml`` always
  describes the run it sits beside;
* ``--resume`` into a folder holding ``best.pth`` or metric rows but no ``last.pth`` is
  refused (starting from scratch would replace them);
* temporary checkpoint files left by a crash mid-write (``.last.pth.*.tmp``) are removed;
* a new run that fails before its first checkpoint (a teacher that does not fit, a bad
  image, ...) leaves nothing behind (:func:`discard_unstarted_run`), so the next attempt needs
  no ``--overwrite``; what the folder held before the run (a ``tb/`` of the user's) is kept.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import yaml

from ..config import Config, settings
from ..errors import ResdistError

try:  # POSIX; elsewhere the lock is advisory only through the file's presence
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

RUN_FILES = ("config.yaml", "last.pth", "best.pth", "metrics.jsonl", "metrics.csv")
LOCK_NAME = ".lock"


class RunDirError(ResdistError, RuntimeError):
    """The run directory cannot be used as asked (the message says why and what to do)."""


def _os_error(e: OSError, what: str, flag: str = "--out") -> RunDirError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunDirError(f"{what}: no space left on the device; make room, or choose another "
                           f"{flag}")
    return RunDirError(f"{what}: {e.strerror or e}; choose another {flag}")


class RunLock:
    """An exclusive ``flock`` on ``out/.lock`` holding this process's pid and host name."""

    def __init__(self, run_dir: Path, remove_empty_dir: bool = False, *, user: str = "training",
                 flag: str = "--out") -> None:
        self.path = run_dir / LOCK_NAME
        # for messages: what holds such folders, and the flag that names another folder
        self.user, self.flag = user, flag
        self.remove_empty_dir = remove_empty_dir  # the run created the folder: tidy up
        self.fresh = False  # the folder held no run when it was opened (set by open_run_dir)
        self.preexisting: set[str] = set()  # names in the folder before the run: never removed
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirError` naming the process that holds it."""
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise _os_error(e, f"cannot write into {self.path.parent}", self.flag) from e
            if fcntl is None:
                break
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunDirError(
                    f"{self.path.parent} is in use by another {self.user} ({holder}); wait for "
                    f"it to finish, or {'train into' if self.user == 'training' else 'use'} another "
                    f"{self.flag}"
                ) from None
            # a releasing holder unlinks the file: make sure we locked the one on disk
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        except OSError as e:  # a full disk: leave no lock file behind
            with contextlib.suppress(OSError):
                self.path.unlink()
            os.close(fd)
            raise _os_error(e, f"cannot write the lock file {self.path}", self.flag) from e
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent); with ``remove_empty_dir``, a run
        folder left empty (the run failed before writing anything) is removed too."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self.remove_empty_dir:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only succeeds when empty

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def existing_run(run_dir: Path) -> list[str]:
    """The run files already in ``run_dir`` (empty: no run there)."""
    return [name for name in RUN_FILES if (run_dir / name).exists()]


def check_resume_matches(run_dir: Path, cfg: Config) -> None:
    """Raise :class:`RunDirError` when ``cfg`` differs from the saved run in any key that
    changes what the run computes (:func:`resdist.config.settings`; nothing is compared when the
    folder holds no ``config.yaml``; keys an older ``config.yaml`` lacks are not compared).
    ``train.epochs`` may change: that is how a run is continued for more epochs (the LR schedule
    and JointRD's m(e) are then stretched over the new total from the next epoch on)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise RunDirError(f"cannot read {path} to check --resume: {e}") from e
    if not isinstance(saved, dict):
        raise RunDirError(f"{path} does not hold a run's settings (not a YAML mapping); "
                          "train into a new --out, or replace the run with --overwrite")
    new = settings(cfg.to_dict())
    for section, values in new.items():
        old_section = saved.get(section) if isinstance(saved.get(section), dict) else {}
        for name, value in values.items():
            old_value = old_section.get(name, value)
            if old_value != value and (section, name) != ("train", "epochs"):
                raise RunDirError(
                    f"--resume: the run in {run_dir} has {section}.{name}={old_value!r}, this "
                    f"command asks for {value!r}; resume with the run's own settings "
                    f"(--config {path} --resume) or train into a new --out"
                )


def move_aside(run_dir: Path) -> Path:
    """Move everything in ``run_dir`` but the lock to ``<run_dir>.old-<time>``; returns it."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = run_dir.with_name(f"{run_dir.name}.old-{stamp}")
    n = 1
    while dest.exists():
        n += 1
        dest = run_dir.with_name(f"{run_dir.name}.old-{stamp}-{n}")
    dest.mkdir(parents=True)
    for entry in run_dir.iterdir():
        if entry.name != LOCK_NAME:
            shutil.move(str(entry), str(dest / entry.name))
    return dest


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete checkpoint temporaries (``.NAME.pth.*.tmp``) a crash mid-write left behind."""
    stale = sorted(run_dir.glob(".*.pth.*.tmp"))
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def open_run_dir(cfg: Config, say=print) -> RunLock:
    """Check, lock and prepare ``cfg.train.out`` for the run ``cfg`` describes (see module
    docstring); returns the held lock (release it when the run ends).

    Raises:
        RunDirError: ``out`` is a file or cannot be written, another training holds it, it
            holds a run and neither ``resume`` nor ``overwrite`` is set, or ``resume`` asks for
            another model/method/data set than the saved run.
    """
    run_dir = Path(cfg.train.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"--out {run_dir} is a file, not a folder; choose a folder for the run")
    created = not run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _os_error(e, f"cannot create the run directory {run_dir}") from e
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write into the run directory {run_dir}: permission denied; "
                          "choose another --out")
    lock = RunLock(run_dir, remove_empty_dir=created)
    try:
        lock.acquire()
    except RunDirError:
        if created:  # leave no folder behind that holds nothing (or only a lock file)
            with contextlib.suppress(OSError):
                run_dir.rmdir()
        raise
    try:
        found = existing_run(run_dir)
        if cfg.train.resume:
            check_resume_matches(run_dir, cfg)
            check_resumable(run_dir)
        elif found and cfg.train.overwrite:
            say(f"--overwrite: moved the previous run in {run_dir} to {move_aside(run_dir)}")
        elif found:
            raise RunDirError(
                f"{run_dir} already holds a run ({', '.join(found)}); continue it with "
                "--resume, train into a new --out, or replace it with --overwrite (the old "
                f"files move to {run_dir.name}.old-<time>)"
            )
        remove_stale_temporaries(run_dir)
        lock.fresh = not existing_run(run_dir)
        lock.preexisting = {p.name for p in run_dir.iterdir() if p.name != LOCK_NAME}
    except BaseException:
        lock.release()
        raise
    return lock


def check_resumable(run_dir: Path) -> None:
    """Raise :class:`RunDirError` when ``run_dir`` holds a run's results (metric rows, or a
    ``best.pth`` of a later epoch than the first) but no ``last.pth`` to continue from:
    resuming would start from scratch and replace them. A ``best.pth`` of epoch 1 alone is
    what a run killed between writing its first ``best.pth`` and its first ``last.pth``
    leaves; that run starts again."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .metrics import read_metrics

    if (run_dir / "last.pth").exists():
        return
    rows = bool(read_metrics(run_dir / "metrics.jsonl"))
    best = run_dir / "best.pth"
    found = ["best.pth"] if best.exists() else []
    if found and not rows:
        try:
            if load_checkpoint(best).epoch <= 1:
                found = []
        except (CheckpointError, ResdistError):
            pass  # unreadable: not ours to replace
    if rows:
        found.append("metrics.jsonl")
    if found:
        raise RunDirError(
            f"--resume: {run_dir} holds {' and '.join(found)} but no last.pth to continue "
            "from; restore last.pth, or start the run again with --overwrite (the old files "
            f"move to {run_dir.name}.old-<time>)")


def discard_unstarted_run(run_dir: Path, keep: set[str] | frozenset[str] = frozenset()
                          ) -> list[str]:
    """Remove what a run that failed before its first checkpoint wrote (``config.yaml``,
    metrics, ``tb/``, ``train.log``), so that the next run into the folder needs no
    ``--overwrite``; names in ``keep`` (what the folder held before the run) and a folder with
    a ``last.pth`` are left alone. Returns the names removed."""
    if (run_dir / "last.pth").exists():
        return []
    removed = []
    for name in (*RUN_FILES, "teacher.json", "tb", "steps.jsonl", "train.log"):
        if name in keep:
            continue
        path = run_dir / name
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
                removed.append(name)
            elif path.exists():
                path.unlink()
                removed.append(name)
    return removed
