"""An image classification set held as two tensors: uint8 images and int64 labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DataError


@dataclass
class ArrayDataset:
    """A whole split in memory.

    Attributes:
        images: ``(N, C, H, W)`` uint8 tensor, pixel values 0..255.
        labels: ``(N,)`` int64 tensor of class indices.
        class_names: one name per class, or None when the source has none.
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise DataError(
                f"images must be a (N, C, H, W) uint8 tensor, got {self.images.dtype} "
                f"of shape {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or len(self.labels) != len(self.images):
            raise DataError(
                f"{len(self.images)} images but labels of shape {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.to(torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: torch.Tensor) -> ArrayDataset:
        """The images at ``indices`` (a 1-d int64 tensor), in that order."""
        return ArrayDataset(self.images[indices], self.labels[indices], self.class_names)

    def head(self, n: int | None) -> ArrayDataset:
        """The first ``n`` images (all of them when ``n`` is None or not smaller)."""
        if n is None or n >= len(self):
            return self
        return ArrayDataset(self.images[:n], self.labels[:n], self.class_names)
