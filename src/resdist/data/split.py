"""Held-out validation splits carved deterministically out of a training set."""

from __future__ import annotations

import math

import torch

from .errors import DataError

VAL_SPLIT_SEED = 0
"""The split depends only on the data, not on the run's seed, so runs with different seeds
hold out the same images and their validation numbers are comparable."""


def val_count(n: int, val_split: float) -> int:
    """How many of ``n`` training images ``val_split`` holds out.

    Args:
        n: training images available (after ``limit_train``).
        val_split: a fraction in ``(0, 1)`` or a whole count ``>= 1``; 0 holds out nothing.

    Raises:
        DataError: the split is negative, a non-whole count, or leaves no training image.
    """
    if val_split < 0:
        raise DataError(f"data.val_split must be >= 0, got {val_split}")
    if val_split == 0:
        return 0
    if val_split < 1:
        count = max(1, round(n * val_split))
    else:
        if not float(val_split).is_integer():
            raise DataError(
                f"data.val_split={val_split} is neither a fraction below 1 nor a whole count"
            )
        count = int(val_split)
    if count >= n:
        raise DataError(
            f"data.val_split={val_split} would hold out {count} of the {n} training images "
            "(counted after data.limit_train), leaving none to train on; use a smaller split"
        )
    return count


def holdout_indices(
    n: int,
    val_split: float,
    *,
    labels: torch.Tensor | None = None,
    seed: int = VAL_SPLIT_SEED,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into sorted ``(train_indices, val_indices)``.

    The choice is a seeded random draw. With ``labels`` it is stratified: every class gives
    the same share of its images (up to rounding), so small validation sets still cover all
    classes.
    """
    k = val_count(n, val_split)
    if k == 0:
        return torch.arange(n), torch.empty(0, dtype=torch.int64)
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    if labels is None:
        chosen = perm[:k]
    else:
        labels = torch.as_tensor(labels, dtype=torch.int64)
        if len(labels) != n:
            raise DataError(f"{n} images but {len(labels)} labels")
        lab = labels[perm]
        counts = torch.bincount(lab)
        starts = torch.cumsum(counts, 0) - counts
        order = torch.argsort(lab, stable=True)
        rank_in_class = torch.empty(n, dtype=torch.int64)
        rank_in_class[order] = torch.arange(n) - starts[lab[order]]
        # Interleave the classes: the i-th image of a class with c images sits at (i + .5) / c.
        key = (rank_in_class.double() + 0.5) / counts[lab].double()
        chosen = perm[torch.argsort(key, stable=True)[:k]]
    mask = torch.ones(n, dtype=torch.bool)
    mask[chosen] = False
    return torch.nonzero(mask).flatten(), torch.sort(chosen).values


def evenly_spaced(n: int, k: int | None) -> torch.Tensor:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k`` is None or >= n).

    Used to limit folder-ordered sets (ImageFolder lists class by class), where the first
    ``k`` images would all come from the first classes.
    """
    if k is None or k >= n:
        return torch.arange(n)
    return torch.tensor([math.floor(i * n / k) for i in range(k)], dtype=torch.int64)
