"""Evaluation (top-1/top-5/loss) and per-epoch metric logs (CSV, JSONL, TensorBoard)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
    n = max(totals[3].item(), 1.0)
    return {"loss": totals[0].item() / n, "top1": 100.0 * totals[1].item() / n,
            "top5": 100.0 * totals[2].item() / n, "samples": int(totals[3].item())}


class MetricsLogger:
    """Append one row per epoch to ``metrics.csv`` and ``metrics.jsonl`` (and TensorBoard)."""

    def __init__(self, run_dir: str | Path, tensorboard: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.jsonl = self.run_dir / "metrics.jsonl"
        self.csv = self.run_dir / "metrics.csv"
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tb"))
            except ImportError:
                self.writer = None

    def log(self, row: dict[str, Any]) -> None:
        with self.jsonl.open("a") as f:
            f.write(json.dumps(row) + "\n")
        rows = self.read()
        keys: list[str] = []
        for r in rows:
            keys += [k for k in r if k not in keys]
        with self.csv.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        if self.writer is not None:
            step = int(row.get("epoch", 0))
            for k, v in row.items():
                if isinstance(v, int | float) and k != "epoch":
                    self.writer.add_scalar(k.replace("_", "/", 1), v, step)
            self.writer.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.jsonl.exists():
            return []
        return [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def truncate(self, epochs: int) -> None:
        """Keep only rows of epochs ``<= epochs`` (after resuming from an earlier checkpoint)."""
        rows = [r for r in self.read() if r.get("epoch", 0) <= epochs]
        self.jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
