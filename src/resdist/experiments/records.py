"""Per-run records of an accuracy suite, kept so a suite can be finished across several
invocations and machines.

Each finished run of ``resdist reproduce`` is written, as soon as it finishes, to
``RESULTS/runs/{suite}/seed{s}/{run}.json``: its settings, per-epoch metrics, final and best
top-1, training time and the machine it ran on (CPU model, cores, torch). A later invocation, on
this machine or another, reuses a record instead of training the run again. Each seed's teacher
is also kept as a small weights-only checkpoint beside its record, so students of that seed
trained later, anywhere, learn from the very same teacher.

A record is reused only when its settings equal the planned run's; a folder holding records made
with other settings is refused (one line), so results of different settings are never mixed. A
key added to the configuration after a record was written is read as its default there (a new
key's default keeps the behaviour the record was made with), so such a record is still reused
when the planned run leaves that key at its default.
"""

from __future__ import annotations

import json
import math
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..atomic import write_text_atomic
from ..config import Config, settings
from ..engine.rundir import RunLock
from ..errors import ResdistError

#: What every record holds besides its settings.
_FIELDS = ("final_top1", "best_top1", "curve", "train_time_s", "history", "machine")


class RecordError(ResdistError, ValueError):
    """A stored run record cannot be used (other settings, unreadable, teacher missing)."""


class RunStore:
    """The records of one suite under ``root/runs/{suite}``."""

    def __init__(self, root: str | os.PathLike, suite: str) -> None:
        self.dir = Path(root) / "runs" / suite

    def check_writable(self) -> None:
        """Create the records folder now, so an unusable ``--results`` fails before training."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RecordError(f"cannot create the run records folder {self.dir}: "
                              f"{e.strerror or e}; choose another --results") from e

    def lock(self) -> RunLock:
        """Hold ``.lock`` in the records folder (an exclusive ``flock``, released with the
        process), so two suites never write one folder's records at once.

        Raises:
            RunDirError: another ``reproduce`` holds it.
        """
        lock = RunLock(self.dir, user="reproduce", flag="--results")
        lock.acquire()
        return lock

    def recorded_seeds(self) -> set[int]:
        """The seeds that have a folder of records here."""
        if not self.dir.is_dir():
            return set()
        return {int(p.name[4:]) for p in self.dir.iterdir()
                if p.is_dir() and re.fullmatch(r"seed\d+", p.name)}

    def record_path(self, seed: int, run: str) -> Path:
        return self.dir / f"seed{seed}" / f"{run}.json"

    def weights_path(self, seed: int, run: str) -> Path:
        """The weights-only checkpoint kept for seed ``seed``'s run ``run`` (every teacher, and
        every run of a suite that keeps weights)."""
        return self.dir / f"seed{seed}" / f"{run}.pth"

    def load(self, seed: int, run: str, config: dict[str, Any]) -> dict[str, Any] | None:
        """The record of ``run`` for ``seed`` if one exists; ``None`` if not.

        Raises:
            RecordError: the record is unreadable, or was measured with other settings.
        """
        path = self.record_path(seed, run)
        if not path.exists() and not path.is_symlink():  # a dangling or looping link is read
            return None
        try:
            record = json.loads(path.read_text(), parse_constant=_refuse_constant)
            problem = record_problem(record)
        except (OSError, ValueError, RecursionError) as e:
            problem = str(e)
        if problem is None and (record["run"] != run or record["seed"] != seed
                                or isinstance(record["seed"], bool)):
            problem = f"it is the record of run {record['run']!r}, seed {record['seed']!r}"
        if problem:
            raise RecordError(f"run record {path} is unreadable ({problem[:200]}); delete it to "
                              "train that run again")
        stored = record["settings"]
        want = settings(config)
        stored = _with_new_keys_at_default(stored)
        if stored != want:
            keys = _differing_keys(stored, want)
            raise RecordError(
                f"run record {path} was measured with other settings (differs in: "
                f"{', '.join(keys) or 'layout'}); pass another --results folder, or delete "
                f"{self.dir} to start this suite again")
        return record

    def save(self, seed: int, run: str, config: dict[str, Any], fields: dict[str, Any],
             machine: dict[str, Any]) -> dict[str, Any]:
        """Write the record of a finished run (atomically) and return it."""
        record = {
            "run": run, "seed": seed, **fields, "machine": machine,
            "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "settings": settings(config),
        }
        _write_atomic(self.record_path(seed, run), json.dumps(record, indent=1) + "\n")
        return record

    def save_weights(self, seed: int, run: str, checkpoint: str | os.PathLike) -> Path:
        """Keep the weights of ``checkpoint`` (a resdist ``last.pth``) as a small checkpoint
        without optimiser or RNG state at :meth:`weights_path`; returns its path."""
        from ..engine.checkpoint import load_checkpoint

        return load_checkpoint(checkpoint).weights_only().save(self.weights_path(seed, run))


def _refuse_constant(name: str) -> Any:
    raise RecordError(f"{name} is not a number JSON allows")


#: bounds of what a record from another machine may say (its text ends up in reports)
_MAX_TRAIN_S, _MAX_CORES, _MAX_LABEL = 1e8, 1 << 16, 200


def _is_label(x: Any) -> bool:
    return isinstance(x, str) and x.isprintable() and len(x) <= _MAX_LABEL


def _is_top1(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and \
        0 <= x <= 100


def record_problem(record: Any) -> str | None:
    """What is wrong with a loaded run record, field by field, or None: accuracies are finite
    percentages, the curve a non-empty list of them, the training time a finite number of
    seconds, the history a list of mappings, the machine names its CPU, cores and torch, and
    the settings map sections to mappings."""
    if not isinstance(record, dict):
        return "not a JSON object"
    missing = [k for k in (*_FIELDS, "settings", "run", "seed") if k not in record]
    if missing:
        return f"missing {', '.join(missing)}"
    for key in ("final_top1", "best_top1"):
        if not _is_top1(record[key]):
            return f"{key} must be a percentage in [0, 100], got {record[key]!r}"
    curve = record["curve"]
    if not isinstance(curve, list) or not curve or not all(_is_top1(v) for v in curve):
        return "curve must be a non-empty list of percentages in [0, 100]"
    if record["final_top1"] != curve[-1] or record["best_top1"] != max(curve):
        return "final_top1 and best_top1 must be the curve's last and best values"
    t = record["train_time_s"]
    if isinstance(t, bool) or not isinstance(t, int | float) or not 0 <= t <= _MAX_TRAIN_S:
        return f"train_time_s must be a number of seconds in [0, {_MAX_TRAIN_S:g}], got {t!r}"
    if not isinstance(record["history"], list) or not all(
            isinstance(h, dict) for h in record["history"]):
        return "history must be a list of per-epoch mappings"
    m = record["machine"]
    if not isinstance(m, dict) or not all(_is_label(m.get(k)) for k in ("cpu", "torch")) \
            or not (isinstance(m.get("cores"), int) and not isinstance(m["cores"], bool)
                    and 1 <= m["cores"] <= _MAX_CORES) \
            or not all(_is_label(m[k]) for k in ("isa", "gpu") if m.get(k) is not None):
        return (f"machine must name its cpu and torch (printable, at most {_MAX_LABEL} "
                f"characters) and its cores (a whole number in [1, {_MAX_CORES}])")
    settings_ = record["settings"]
    if not isinstance(settings_, dict) or not all(
            isinstance(v, dict) for v in settings_.values()):
        return "settings must map sections to their keys"
    return None


def summary_fields(history: list[dict[str, Any]]) -> dict[str, Any]:
    """What a record keeps of a run's per-epoch metrics."""
    return {
        "final_top1": history[-1]["test_top1"],
        "best_top1": max(h["test_top1"] for h in history),
        "curve": [h["test_top1"] for h in history],
        "train_time_s": sum(h["epoch_time_s"] for h in history),
        "history": history,
    }


def _with_new_keys_at_default(stored: dict[str, Any]) -> dict[str, Any]:
    """``stored`` settings with every key the configuration gained since they were written
    filled in at its default value."""
    if not isinstance(stored, dict):
        return stored
    filled = {}
    for section, defaults in settings(Config().to_dict()).items():
        values = stored.get(section)
        filled[section] = ({**defaults, **values} if isinstance(values, dict) else values)
    return {**stored, **filled}


def _differing_keys(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    keys = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section) or {}, b.get(section) or {}
        if not isinstance(sa, dict) or not isinstance(sb, dict):
            keys.append(section)
            continue
        keys += [f"{section}.{k}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
    return keys


def _write_atomic(path: Path, text: str) -> None:
    try:
        write_text_atomic(path, text)
    except OSError as e:
        raise RecordError(f"cannot write run record {path}: {e.strerror or e}") from e
