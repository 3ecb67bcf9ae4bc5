import pytest
import torch

from resdist.data import DataError, Normalize, RandomCropFlip


def _batch(b=32, c=2, h=7, w=9):
    return torch.randint(1, 256, (b, c, h, w), dtype=torch.uint8)


def test_crop_is_a_window_of_the_zero_padded_image():
    x = _batch()
    p = 2
    out = RandomCropFlip(p, flip=False)(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, dy:dy + 7, dx:dx + 9])]
        assert hits, f"sample {i} is not a crop of its padded input"
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets differ per sample
    assert (out == 0).any()  # some samples show the black padding


def test_flip_mirrors_about_half_the_samples():
    x = _batch(b=64)
    out = RandomCropFlip(0, flip=True)(x, torch.Generator().manual_seed(1))
    same = [torch.equal(out[i], x[i]) for i in range(64)]
    mirrored = [torch.equal(out[i], x[i].flip(-1)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored))
    assert 16 < sum(mirrored) < 48


def test_crop_and_flip_deterministic_with_generator():
    x = _batch()
    aug = RandomCropFlip(4, flip=True)
    a = aug(x, torch.Generator().manual_seed(5))
    b = aug(x, torch.Generator().manual_seed(5))
    c = aug(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert RandomCropFlip(0, flip=False)(x) is x
    with pytest.raises(DataError):
        RandomCropFlip(-1)


def test_normalize_matches_formula():
    x = _batch(c=3)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = Normalize(mean, std)(x)
    ref = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref)
    with pytest.raises(DataError, match="channel"):
        Normalize((0.5,), (0.5,))(x)
