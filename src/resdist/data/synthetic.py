"""A seeded random image set with learnable labels, for tests, demos and benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .arrays import ArrayDataset
from .errors import DataError
from .memory import check_fits

_CHUNK = 4096


def make_synthetic(
    *,
    samples: int = 512,
    classes: int = 10,
    size: int = 32,
    channels: int = 3,
    test_samples: int | None = None,
    noise: float = 40.0,
    seed: int = 0,
) -> tuple[ArrayDataset, ArrayDataset]:
    """Random ``(N, channels, size, size)`` uint8 images as ``(train, test)``.

    Each class has a smooth random prototype (a 4x4 pattern upsampled to ``size``, pixel values
    64..192); an image is its class prototype plus Gaussian pixel noise of std ``noise``. So the
    labels are learnable (a small network separates them within a few epochs) but not trivially
    from one pixel. Classes are balanced; the result depends only on the arguments.

    Args:
        samples: training images.
        classes: number of classes (>= 2).
        size: image height and width.
        channels: image channels.
        test_samples: test images; default ``max(classes, samples // 4)``.
        noise: pixel-noise standard deviation on the 0..255 scale.
        seed: seed of the generator; the same seed gives the same images.
    """
    if test_samples is None:
        test_samples = max(classes, samples // 4)
    checks = {"synthetic_samples": samples, "synthetic_size": size,
              "synthetic_channels": channels, "synthetic test samples": test_samples}
    for key, value in checks.items():
        if value < 1:
            raise DataError(f"data.{key} must be >= 1, got {value}")
    if classes < 2:
        raise DataError(f"data.synthetic_classes must be >= 2, got {classes}")
    pixels = channels * size * size
    check_fits((samples + test_samples) * (pixels + 8) + classes * pixels * 4
               + min(samples, _CHUNK) * pixels * 8, "the synthetic data set",
               "lower data.synthetic_samples, data.synthetic_size or data.synthetic_channels")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(classes, channels, 4, 4, generator=g)
    prototypes = 64 + 128 * F.interpolate(coarse, size=(size, size), mode="bilinear",
                                          align_corners=False)

    def draw(n: int) -> ArrayDataset:
        labels = (torch.arange(n) % classes)[torch.randperm(n, generator=g)]
        images = torch.empty(n, channels, size, size, dtype=torch.uint8)
        for start in range(0, n, _CHUNK):  # bounded float memory for large sets
            part = labels[start : start + _CHUNK]
            noisy = prototypes[part] + noise * torch.randn(
                len(part), channels, size, size, generator=g
            )
            images[start : start + len(part)] = noisy.round_().clamp_(0, 255).to(torch.uint8)
        return ArrayDataset(images, labels, [f"class_{i}" for i in range(classes)])

    return draw(samples), draw(test_samples)
