import pytest
import torch

from resdist.data import DataError, holdout_indices, val_count


def test_counts():
    assert val_count(100, 0) == 0
    assert val_count(100, 0.1) == 10
    assert val_count(100, 0.001) == 1
    assert val_count(100, 25) == 25
    assert val_count(100, 25.0) == 25
    for bad in (100, 2.5, -0.1):
        with pytest.raises(DataError, match="val_split"):
            val_count(100, bad)


def test_disjoint_covering_deterministic():
    train, val = holdout_indices(1000, 0.2)
    assert len(val) == 200 and len(train) == 800
    assert not set(train.tolist()) & set(val.tolist())
    assert sorted(train.tolist() + val.tolist()) == list(range(1000))
    again = holdout_indices(1000, 0.2)
    assert torch.equal(train, again[0]) and torch.equal(val, again[1])
    assert not torch.equal(val, holdout_indices(1000, 0.2, seed=1)[1])


def test_stratified_by_label():
    labels = torch.cat([torch.zeros(900), torch.ones(100)]).long()
    _, val = holdout_indices(1000, 0.1, labels=labels)
    assert torch.bincount(labels[val]).tolist() == [90, 10]
    labels = torch.arange(1000) % 10
    _, val = holdout_indices(1000, 20, labels=labels)
    assert torch.bincount(labels[val], minlength=10).tolist() == [2] * 10
