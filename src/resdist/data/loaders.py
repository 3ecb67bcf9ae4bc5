"""Batch loaders with one interface: iterate ``(images, labels)`` already on the device.

Both loaders yield float32 NCHW normalised images and int64 labels on ``device``; ``len()`` is
the number of batches this process gets per epoch. Each pass over a loader advances its epoch
by one; ``set_epoch`` sets it explicitly (to resume, or to keep DDP ranks in step) and the
shuffle order is a function of ``seed + epoch`` only, so every rank draws the same permutation.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from ..config import check_range
from ..errors import ResdistError
from .errors import DataError
from .transforms import Normalize, RandomCropFlip

Batch = tuple[torch.Tensor, torch.Tensor]


@runtime_checkable
class BatchLoader(Protocol):
    """What the engine needs from a loader."""

    batch_size: int
    num_samples: int  # samples this process sees per epoch
    dataset_size: int  # samples in the whole split

    def __iter__(self) -> Iterator[Batch]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


def shard_indices(
    order: torch.Tensor, rank: int, world_size: int, *, even: bool
) -> torch.Tensor:
    """This rank's part of ``order`` (a permutation every rank shares).

    ``even``: pad by repeating the start of ``order`` (as ``DistributedSampler`` does) so every
    rank gets ``ceil(N / world_size)`` indices. Otherwise the parts are disjoint, cover
    ``order`` exactly and differ in length by at most one (for metrics summed over ranks).
    """
    if world_size == 1:
        return order
    if even:
        total = math.ceil(len(order) / world_size) * world_size
        reps = math.ceil(total / max(len(order), 1))
        order = order.repeat(reps)[:total]
    return order[rank::world_size]


def check_rank(rank: int, world_size: int) -> None:
    """Raise :class:`DataError` unless ``0 <= rank < world_size``."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise DataError(f"rank {rank} is not in 0..{world_size - 1} (world size {world_size})")


def _check_batches(n: int, batch_size: int, drop_last: bool) -> None:
    check_range("batch_size", batch_size, 1, error=DataError)
    if drop_last and n < batch_size:
        raise DataError(
            f"only {n} training images per process, fewer than the batch size {batch_size}: "
            "no full batch per epoch; lower data.batch_size (or data.val_split, or raise "
            "data.limit_train)"
        )


def _augment_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0] >> 1)


class InMemoryLoader:
    """Batches from a split held as one uint8 tensor, with augmentation on the device.

    Per epoch: a seeded permutation (``seed + epoch``; none when ``shuffle`` is false), this
    rank's shard of it, then per batch an ``index_select``, the vectorised augmentation (on
    uint8, so crops pad with black as in the standard recipes) and a fused float conversion
    and normalisation. No worker processes, no per-sample Python.

    Each sample's crop and flip are drawn from ``(seed, epoch, index of the sample in the data
    set)`` only (one CPU generator per epoch draws them for the whole set), so one process and
    N processes at the same global batch see the same augmented images, on any device.

    Args:
        images: ``(N, C, H, W)`` uint8. Moved to ``device`` once, unless ``storage`` says where
            to keep it (e.g. ``"cpu"``: batches are then copied to ``device`` one at a time).
        labels: ``(N,)`` class indices.
        batch_size: images per batch (per process).
        normalize: uint8 -> normalised float32.
        augment: applied to each uint8 batch, or None.
        shuffle: reshuffle every epoch (training).
        drop_last: drop the last incomplete batch (training).
        shard: split the samples across ``world_size`` ranks.
        even_shards: pad shards to equal length (training); False gives disjoint shards with
            no repeated sample, possibly one sample apart (sharded evaluation).
        device: where batches are produced.
        seed: shuffle and augmentation seed.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        normalize: Normalize,
        augment: RandomCropFlip | None = None,
        shuffle: bool = False,
        drop_last: bool = False,
        shard: bool = False,
        even_shards: bool = True,
        device: torch.device | str = "cpu",
        storage: torch.device | str | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4 or len(labels) != len(images):
            raise DataError(
                f"expected (N, C, H, W) uint8 images and N labels, got {images.dtype} "
                f"{tuple(images.shape)} and {tuple(labels.shape)}"
            )
        check_rank(rank, world_size)
        self.device = torch.device(device)
        storage = self.device if storage is None else torch.device(storage)
        self.images = images.to(storage)
        self.labels = labels.to(storage, torch.int64)
        if storage.type == "cpu" and self.device.type == "cuda":
            self.images, self.labels = self.images.pin_memory(), self.labels.pin_memory()
        self.batch_size = int(batch_size)
        self.normalize, self.augment = normalize, augment
        self.shuffle, self.drop_last = shuffle, drop_last
        self.shard, self.even_shards = shard and world_size > 1, even_shards
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0
        self.dataset_size = len(images)
        self._shard_size = len(self.indices())
        _check_batches(self._shard_size, self.batch_size, drop_last)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self, epoch: int | None = None) -> torch.Tensor:
        """The sample indices this rank visits in ``epoch`` (default: the current one), in order
        (including any dropped in a last incomplete batch)."""
        epoch = self.epoch if epoch is None else epoch
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + epoch)
            order = torch.randperm(self.dataset_size, generator=g)
        else:
            order = torch.arange(self.dataset_size)
        if not self.shard:
            return order
        return shard_indices(order, self.rank, self.world_size, even=self.even_shards)

    def __len__(self) -> int:
        if self.drop_last:
            return self._shard_size // self.batch_size
        return math.ceil(self._shard_size / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.drop_last else self._shard_size

    def _gather(self, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``source[index]``; into pinned host memory when the source is pinned, so that the
        copy to the GPU is asynchronous (``index_select`` alone returns unpinned memory).
        PyTorch's pinned-memory cache reuses a block only after its copy has finished."""
        if not source.is_pinned():
            return source.index_select(0, index)
        out = torch.empty((len(index), *source.shape[1:]), dtype=source.dtype, pin_memory=True)
        return torch.index_select(source, 0, index, out=out)

    def __iter__(self) -> Iterator[Batch]:
        epoch = self.epoch
        self.epoch += 1
        idx = self.indices(epoch)[: self.num_samples].to(self.images.device)
        params = None
        if self.augment is not None:
            gen = torch.Generator().manual_seed(_augment_seed(self.seed, epoch))
            params = self.augment.draw(self.dataset_size, gen).to(self.images.device)
        for start in range(0, len(idx), self.batch_size):
            batch = idx[start : start + self.batch_size]
            x = self._gather(self.images, batch).to(self.device, non_blocking=True)
            y = self._gather(self.labels, batch).to(self.device, non_blocking=True)
            if params is not None:
                x = self.augment.apply(x, params.index_select(0, batch))
            yield self.normalize(x), y


class _StridedSampler(Sampler[int]):
    """Indices ``rank, rank + W, ...``: disjoint shards without padding (sharded evaluation)."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


# Deployment runtimes that start threads of their own when imported or used; forking a process
# that holds them can deadlock or crash the child (and has crashed the parent in our tests).
_THREADED_RUNTIMES = ("jax", "executorch", "openvino", "ai_edge_litert", "tensorflow")


def _worker_context() -> str | None:
    """DataLoader workers start by fork (fast) unless a threaded runtime is loaded in this
    process, as when an exported file is evaluated: then by forkserver."""
    if any(name in sys.modules for name in _THREADED_RUNTIMES):
        return "forkserver"
    return None


class TorchLoader:
    """A ``torch.utils.data.DataLoader`` (CPU workers, per-sample transforms) behind the same
    interface as :class:`InMemoryLoader`; batches are moved to ``device`` as they come.

    Training (``shuffle``) uses a ``DistributedSampler`` seeded with ``seed`` (also for one
    process); ``shard`` without ``shuffle`` gives each rank a disjoint strided part.
    Memory is pinned when ``device`` is CUDA, workers persist across epochs when there are any.
    """

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        shuffle: bool = False,
        drop_last: bool = False,
        shard: bool = False,
        num_workers: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        check_rank(rank, world_size)
        check_range("num_workers", num_workers, 0, error=DataError)
        self.device = torch.device(device)
        self.dataset = dataset
        self.dataset_size = len(dataset)  # type: ignore[arg-type]
        self.batch_size = int(batch_size)
        self.drop_last = drop_last
        self.epoch = 0
        self.sampler: Sampler[int] | None
        if shuffle:
            self.sampler = DistributedSampler(
                dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed
            )
        elif shard and world_size > 1:
            self.sampler = _StridedSampler(self.dataset_size, rank, world_size)
        else:
            self.sampler = None
        shard_size = self.dataset_size if self.sampler is None else len(self.sampler)  # type: ignore[arg-type]
        _check_batches(shard_size, self.batch_size, drop_last)
        self.loader = DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=self.sampler,
            num_workers=num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=num_workers > 0,
            multiprocessing_context=_worker_context() if num_workers > 0 else None,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(seed + 7919 * rank),
        )
        self.num_samples = len(self.loader) * self.batch_size if drop_last else shard_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        if isinstance(self.sampler, DistributedSampler):
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        try:
            for x, y in self.loader:
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except (ResdistError, OSError) as e:
            inner = worker_error_message(str(e))
            if inner is None:
                raise
            try:
                clean = type(e)(inner)
            except Exception:  # noqa: BLE001 - a type that takes other arguments
                raise e from None
            raise clean from None


def worker_error_message(text: str) -> str | None:
    """The original message of an exception a ``DataLoader`` worker process raised, from the
    text the main process re-raises it with (``Caught DataError in DataLoader worker process
    0. Original Traceback ... resdist.data.errors.DataError: FILE: ...``); ``None`` if ``text``
    is no such text."""
    head, sep, tb = text.partition("Original Traceback (most recent call last):")
    if not sep or "DataLoader worker process" not in head:
        return None
    lines = tb.splitlines()
    frame = max((i for i, ln in enumerate(lines) if ln.startswith("  File ")), default=-1)
    start = next((i for i in range(frame + 1, len(lines))
                  if lines[i] and not lines[i][0].isspace()), None)
    if start is None:
        return None
    message = " ".join(ln.strip() for ln in lines[start:] if ln.strip())
    name, colon, rest = message.partition(": ")
    return rest if colon and " " not in name else message
