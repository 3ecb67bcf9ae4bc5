import pytest
import torch

from resdist.data import DataError, InMemoryLoader, Normalize, RandomCropFlip, shard_indices

MEAN, STD = (0.3, 0.6), (0.2, 0.25)


def _data(n=100):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 2, 8, 8), dtype=torch.uint8, generator=g)
    return images, torch.arange(n)  # label = index, so batches reveal which samples they hold


def _train(n=100, **kw):
    images, labels = _data(n)
    args = dict(batch_size=8, normalize=Normalize(MEAN, STD), shuffle=True, drop_last=True,
                shard=True)
    args.update(kw)
    return InMemoryLoader(images, labels, **args)


def _epoch(loader):
    return torch.cat([y for _, y in loader])


def test_epochs_reshuffle_and_same_seed_same_order():
    a, b = _train(seed=1), _train(seed=1)
    first, second = _epoch(a), _epoch(a)
    assert not torch.equal(first, second)
    assert torch.equal(first, _epoch(b)) and torch.equal(second, _epoch(b))
    assert not torch.equal(first, _epoch(_train(seed=2)))
    a.set_epoch(0)
    assert torch.equal(_epoch(a), first)


def test_same_seed_same_augmented_batches():
    aug = RandomCropFlip(2)
    a, b = _train(seed=3, augment=aug), _train(seed=3, augment=aug)
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_epoch_is_a_permutation_without_repeats():
    loader = _train(n=100, batch_size=8)
    seen = _epoch(loader)
    assert len(loader) == 12 and loader.num_samples == 96 and loader.dataset_size == 100
    assert len(seen) == 96 and len(set(seen.tolist())) == 96


@pytest.mark.parametrize("n", [100, 103])
def test_two_ranks_get_equal_disjoint_covering_shards(n):
    ranks = [_train(n=n, seed=5, rank=r, world_size=2, batch_size=4) for r in range(2)]
    parts = [set(loader.indices(epoch=3).tolist()) for loader in ranks]
    lengths = [len(loader.indices(epoch=3)) for loader in ranks]
    assert lengths[0] == lengths[1] == -(-n // 2)
    assert parts[0] | parts[1] == set(range(n))
    if n % 2 == 0:
        assert not parts[0] & parts[1]
    else:
        assert len(parts[0] & parts[1]) == 1  # one sample repeated to even out
    assert len(ranks[0]) == len(ranks[1]) == lengths[0] // 4
    for loader in ranks:
        loader.set_epoch(3)
        assert set(_epoch(loader).tolist()) <= parts[ranks.index(loader)]


def test_sharded_eval_is_disjoint_without_padding():
    images, labels = _data(103)
    parts = [
        _epoch(InMemoryLoader(images, labels, batch_size=10, normalize=Normalize(MEAN, STD),
                              shard=True, even_shards=False, rank=r, world_size=2))
        for r in range(2)
    ]
    assert len(parts[0]) + len(parts[1]) == 103
    assert sorted(torch.cat(parts).tolist()) == list(range(103))


def test_eval_unsharded_in_order_and_equal_to_normalised_raw():
    images, labels = _data(21)
    loader = InMemoryLoader(images, labels, batch_size=8, normalize=Normalize(MEAN, STD),
                            rank=1, world_size=2)
    batches = list(loader)
    assert [len(y) for _, y in batches] == [8, 8, 5] and len(loader) == 3
    assert loader.num_samples == 21
    x = torch.cat([b[0] for b in batches])
    ref = (images.float() / 255 - torch.tensor(MEAN).view(1, 2, 1, 1)) / torch.tensor(
        STD).view(1, 2, 1, 1)
    torch.testing.assert_close(x, ref)
    assert torch.equal(torch.cat([b[1] for b in batches]), labels)


def test_augment_keeps_shapes_and_off_gives_raw():
    images, _ = _data()
    for augment in (None, RandomCropFlip(3)):
        loader = _train(augment=augment, seed=0)
        x, y = next(iter(loader))
        assert x.shape == (8, 2, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        raw = Normalize(MEAN, STD)(images[y])
        assert torch.equal(x, raw) == (augment is None)


def test_host_storage_gives_same_batches():
    a = _train(seed=4, augment=RandomCropFlip(1))
    b = _train(seed=4, augment=RandomCropFlip(1), storage="cpu")
    for (xa, _), (xb, _) in zip(a, b):
        assert torch.equal(xa, xb)


def test_too_few_samples_for_a_batch():
    with pytest.raises(DataError, match="fewer than the batch size"):
        _train(n=10, batch_size=8, world_size=2)
    with pytest.raises(DataError, match="rank 2"):
        _train(rank=2, world_size=2)


def test_shard_indices_helper():
    order = torch.tensor([4, 0, 3, 1, 2])
    assert shard_indices(order, 0, 2, even=True).tolist() == [4, 3, 2]
    assert shard_indices(order, 1, 2, even=True).tolist() == [0, 1, 4]
    assert shard_indices(order, 1, 2, even=False).tolist() == [0, 1]
    assert shard_indices(torch.arange(2), 3, 4, even=True).tolist() == [1]


def test_augmentation_depends_on_sample_not_on_rank_or_batch():
    # one process at batch 16 and two ranks at batch 8 see the same augmented image for each
    # sample (labels are the sample indices), epoch after epoch
    aug = RandomCropFlip(2, flip=True)
    one = _train(n=64, seed=4, augment=aug, batch_size=16)
    ranks = [_train(n=64, seed=4, augment=aug, batch_size=8, rank=r, world_size=2)
             for r in range(2)]
    for _ in range(2):
        ref = {int(y): x for xb, yb in one for x, y in zip(xb, yb)}
        got = {int(y): x for loader in ranks for xb, yb in loader for x, y in zip(xb, yb)}
        assert got.keys() == ref.keys() and len(ref) == 64
        for k in ref:
            assert torch.equal(got[k], ref[k]), k
    plain = _train(n=64, seed=4, batch_size=16)
    plain.set_epoch(1)
    one.set_epoch(1)
    assert any(not torch.equal(a, b) for (a, _), (b, _) in zip(one, plain))  # it augments
