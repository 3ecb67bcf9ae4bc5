"""Evaluation (top-1/top-5/loss), per-epoch and per-step metric logs (CSV, JSONL,
TensorBoard) and the run's ``train.log``."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import DataError
from .distributed import all_reduce_sum


def topk_correct(logits: Tensor, labels: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose label is within the top-k logits, for each k."""
    kmax = min(max(ks), logits.shape[1])
    pred = logits.topk(kmax, dim=1).indices
    hit = pred.eq(labels.view(-1, 1))
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[tuple[Tensor, Tensor]],
    *,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy of ``model`` over ``loader``.

    Counts are summed across ranks when distributed (the loader should then shard the set).

    Raises:
        DataError: the loader yields no image (on any rank).
    """
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    totals = torch.zeros(4, dtype=torch.float64, device=p.device)
    for images, labels in loader:
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(p.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(images)
        logits = logits.float()
        c1, c5 = topk_correct(logits, labels)
        totals += torch.stack([
            F.cross_entropy(logits, labels, reduction="sum").double(), c1.double(), c5.double(),
            torch.tensor(float(labels.numel()), device=p.device, dtype=torch.float64),
        ])
    model.train(was_training)
    all_reduce_sum(totals)
    if totals[3].item() == 0:
        raise DataError("the evaluation set is empty (no images to score); check the data "
                        "folder, data.limit_test and data.val_split")
    n = totals[3].item()
    return {"loss": totals[0].item() / n, "top1": 100.0 * totals[1].item() / n,
            "top5": 100.0 * totals[2].item() / n, "samples": int(totals[3].item())}


STEPS_FILE = "steps.jsonl"  # per-step training loss and LR, beside metrics.jsonl
LOG_FILE = "train.log"  # what the console showed


class MetricsLogger:
    """Append one row per epoch to ``metrics.csv`` and ``metrics.jsonl``, one row every few
    optimiser steps to ``steps.jsonl`` (all to TensorBoard too), and the console's lines to
    ``train.log``."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        self.steps = self.run_dir / STEPS_FILE
        self.log_path = self.run_dir / LOG_FILE
        self._pending: list[str] | None = []
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:
                self.writer = None

    def log(self, row: dict[str, Any]) -> None:
        """Append ``row`` (call it once the epoch's checkpoint is written)."""
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self._write_csv(self.read())
        if self.writer is not None:
            step = int(row.get("epoch", 0))
            for k, v in row.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.writer.add_scalar(k.replace("_", "/", 1), v, step)
            self.writer.flush()

    def log_step(self, row: dict[str, Any]) -> None:
        """Append a per-step row (``epoch``, global ``step``, ``loss``, ``lr``) to
        ``steps.jsonl`` and to TensorBoard (tags ``step/loss``, ``step/lr``, x = the step)."""
        with self.steps.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step"):
                    self.writer.add_scalar(f"step/{k}", v, int(row["step"]))

    def note(self, line: str) -> None:
        """Append one console line to ``train.log`` (kept in memory until :meth:`open_log`,
        so that a run refused before it starts leaves the folder as it was)."""
        if self._pending is not None:
            self._pending.append(line)
            return
        # a path undecodable under LANG=C (surrogate escapes) is written as its escapes
        with self.log_path.open("a", encoding="utf-8", errors="backslashreplace") as f:
            f.write(line.rstrip("\n") + "\n")

    def open_log(self) -> None:
        """Start writing ``train.log``: the lines noted so far, then each line as it comes."""
        pending, self._pending = self._pending or [], None
        for line in pending:
            self.note(line)

    def _write_csv(self, rows: list[dict[str, Any]]) -> None:
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        tmp = self.csv.with_name(self.csv.name + ".tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, self.csv)

    def read(self) -> list[dict[str, Any]]:
        """The logged rows; a line a crash left half-written is skipped."""
        return read_metrics(self.jsonl)

    def reconcile(self, epochs: int, last_row: dict[str, Any] | None = None) -> None:
        """Make the logs hold exactly one row for each epoch ``1..epochs`` that a checkpoint
        covers (after resuming from a checkpoint of ``epochs`` completed epochs): rows past it,
        duplicates and torn lines go; ``last_row`` (the checkpoint's own metrics) fills in the
        last epoch when a crash came between its checkpoint and its row. ``steps.jsonl``
        keeps the rows of those epochs only."""
        by_epoch: dict[int, dict[str, Any]] = {}
        for r in self.read():
            e = r.get("epoch")
            if isinstance(e, int) and 1 <= e <= epochs:
                by_epoch[e] = r
        if epochs >= 1 and epochs not in by_epoch and last_row and last_row.get("epoch") == epochs:
            by_epoch[epochs] = last_row
        rows = [by_epoch[e] for e in sorted(by_epoch)]
        tmp = self.jsonl.with_name(self.jsonl.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
        os.replace(tmp, self.jsonl)
        self._write_csv(rows)
        steps = [r for r in read_metrics(self.steps)
                 if isinstance(r.get("epoch"), int) and 1 <= r["epoch"] <= epochs]
        tmp = self.steps.with_name(self.steps.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in steps))
        os.replace(tmp, self.steps)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` (none if it does not exist); a line a crash left
    half-written is skipped."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
