"""Normalisation constants and augmentation: on-device batch ops and ImageFolder pipelines."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import DataError

# Per-channel statistics of the training sets, in [0, 1] pixel units.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SYNTHETIC_MEAN = 0.5
SYNTHETIC_STD = 0.25

# Random-crop padding of the standard recipes (docs/method.md section 5).
DEFAULT_CROP_PADDING = {"cifar10": 4, "cifar100": 4, "fashion-mnist": 2}


class RandomCropFlip:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once.

    The batch is padded once; each sample then gets its own offset (and flip) through two
    gathers with per-sample index arithmetic, so the cost is a few tensor ops per batch and it
    runs on whatever device the batch is on. Works on any dtype; applied to raw uint8 pixels it
    pads with black, as torchvision's ``RandomCrop(padding=p)`` does before normalisation.

    The random draws are separate from their application (:meth:`draw`, :meth:`apply`), so a
    loader can draw each sample's crop and flip from its index in the data set: then the
    augmentation does not depend on how samples are split into batches or across processes.

    Args:
        padding: pixels of zero padding on each side (0: no crop, output = input size).
        flip: flip each sample horizontally with probability 1/2.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if padding < 0:
            raise DataError(f"crop padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.flip = bool(flip)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"

    def draw(
        self, n: int, generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
    ) -> torch.Tensor:
        """Random parameters for ``n`` samples: ``(n, 3)`` int64 rows ``(dy, dx, flip)``, crop
        offsets in ``[0, 2 * padding]`` and a 0/1 flip (all zero where disabled)."""
        params = torch.zeros((n, 3), dtype=torch.int64, device=device)
        if self.padding:
            params[:, :2] = torch.randint(0, 2 * self.padding + 1, (n, 2), device=device,
                                          generator=generator)
        if self.flip:
            params[:, 2] = torch.rand(n, device=device, generator=generator) < 0.5
        return params

    def apply(self, x: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """Crop and flip ``x`` ``(B, C, H, W)`` with the ``(B, 3)`` parameters of :meth:`draw`."""
        if self.padding == 0 and not self.flip:
            return x
        b, c, h, w = x.shape
        p = self.padding
        dev = x.device
        params = params.to(dev)
        rows = torch.arange(h, device=dev).expand(b, h)
        cols = torch.arange(w, device=dev).expand(b, w)
        if p:
            x = torch.nn.functional.pad(x, (p, p, p, p))
            rows = rows + params[:, 0:1]
            cols = cols + params[:, 1:2]
            x = x.gather(2, rows.view(b, 1, h, 1).expand(b, c, h, w + 2 * p))
        if self.flip:
            cols = torch.where(params[:, 2:3].bool(), cols.flip(1), cols)
        return x.gather(3, cols.view(b, 1, 1, w).expand(b, c, h, w))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, C, H, W)``, same dtype and device."""
        if self.padding == 0 and not self.flip:
            return x
        return self.apply(x, self.draw(x.shape[0], generator, x.device))


class Normalize:
    """uint8 pixels -> float32 ``(x / 255 - mean) / std`` per channel, in one fused op."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        if len(mean) != len(std) or min(std) <= 0:
            raise DataError(f"bad normalisation: mean {mean}, std {std}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self._cache: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"

    def _constants(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._cache:
            mean = torch.tensor(self.mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self._cache[device] = (1.0 / (255.0 * std), -mean / std)
        return self._cache[device]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self._constants(x.device)
        if x.shape[1] != scale.shape[1]:
            raise DataError(f"{x.shape[1]}-channel images but {scale.shape[1]}-channel mean/std")
        return torch.addcmul(shift, x.to(torch.float32), scale)


DEFAULT_CROP_PCT = 0.875  # 224 of 256: the ImageNet convention (timm's crop_pct)


def imagefolder_resize(image_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
    """Shorter side an evaluation image is resized to before the ``image_size`` centre crop:
    ``round(image_size / crop_pct)`` (256 for 224 at the ImageNet convention; ``image_size``
    itself at ``crop_pct=1``, for images already at the network's size)."""
    return round(image_size / crop_pct)


@dataclass(frozen=True)
class FolderPreprocessing:
    """How ImageFolder images become network inputs (``data.*`` keys of the same names).

    Evaluation: the shorter side resized to ``resize`` (default ``image_size / crop_pct``) with
    ``interpolation``, centre crop ``image_size``, x / 255, ``(x - mean) / std``. Training
    (``augment``): ``train_crop`` ``"random-resized"`` (torchvision's RandomResizedCrop at
    ``crop_scale``) or ``"pad-crop"`` (the eval resize, then a random ``image_size`` crop of the
    image padded by ``crop_padding``: the CIFAR recipe, for small images), then a horizontal
    flip when ``hflip``.
    """

    image_size: int = 224
    crop_pct: float = DEFAULT_CROP_PCT
    resize: int | None = None
    interpolation: str = "bilinear"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    train_crop: str = "random-resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_padding: int = 4
    hflip: bool = True
    augment: bool = True

    @property
    def eval_resize(self) -> int:
        return self.resize if self.resize is not None else imagefolder_resize(
            self.image_size, self.crop_pct)

    def _mode(self):  # -> torchvision InterpolationMode
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation)

    def _resize_crop(self) -> list:
        from torchvision import transforms as T

        return [T.Resize(self.eval_resize, interpolation=self._mode()),
                T.CenterCrop(self.image_size)]

    def resize_and_crop(self, img):  # PIL.Image -> PIL.Image
        """The evaluation resize (shorter side to :attr:`eval_resize`) and centre crop of one
        image, before it becomes a tensor."""
        for step in self._resize_crop():
            img = step(img)
        return img

    def eval_transform(self, normalize: bool = True):  # -> torchvision.transforms.Compose
        """Resize, centre crop, tensor and (with ``normalize``) normalisation."""
        from torchvision import transforms as T

        steps = [*self._resize_crop(), T.ToTensor()]
        return T.Compose(steps + ([T.Normalize(self.mean, self.std)] if normalize else []))

    def train_transform(self):  # -> torchvision.transforms.Compose
        """The training pipeline (the evaluation one when ``augment`` is off)."""
        from torchvision import transforms as T

        if not self.augment:
            return self.eval_transform()
        if self.train_crop == "pad-crop":
            steps = [*self._resize_crop(), T.RandomCrop(self.image_size,
                                                        padding=self.crop_padding)]
        else:
            steps = [T.RandomResizedCrop(self.image_size, scale=tuple(self.crop_scale),
                                         interpolation=self._mode())]
        if self.hflip:
            steps.append(T.RandomHorizontalFlip())
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])


def imagefolder_train_transform(
    image_size: int, *, augment: bool = True, hflip: bool = True
):  # -> torchvision.transforms.Compose
    """ImageNet training pipeline: random-resized crop + flip, tensor, normalise."""
    return FolderPreprocessing(image_size, augment=augment, hflip=hflip).train_transform()


def imagefolder_eval_transform(image_size: int):  # -> torchvision.transforms.Compose
    """ImageNet evaluation pipeline: resize to ``image_size * 256/224``, centre crop."""
    return FolderPreprocessing(image_size).eval_transform()
