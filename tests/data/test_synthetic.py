import pytest
import torch

from resdist.data import DataError, make_synthetic


def test_shapes_determinism_and_balance():
    train, test = make_synthetic(samples=200, classes=5, size=12, channels=2, seed=3)
    assert train.images.shape == (200, 2, 12, 12) and train.images.dtype == torch.uint8
    assert test.images.shape == (50, 2, 12, 12)
    assert torch.bincount(train.labels).tolist() == [40] * 5
    again, _ = make_synthetic(samples=200, classes=5, size=12, channels=2, seed=3)
    assert torch.equal(train.images, again.images) and torch.equal(train.labels, again.labels)
    other, _ = make_synthetic(samples=200, classes=5, size=12, channels=2, seed=4)
    assert not torch.equal(train.images, other.images)
    assert not torch.equal(train.images[:50], test.images)


def test_labels_are_learnable():
    train, test = make_synthetic(samples=400, classes=10, size=16, channels=3)
    x, xt = train.images.float().flatten(1), test.images.float().flatten(1)
    centroids = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    accuracy = (torch.cdist(xt, centroids).argmin(1) == test.labels).float().mean()
    assert accuracy > 0.9


def test_short_training_lowers_loss():
    torch.manual_seed(0)
    train, _ = make_synthetic(samples=256, classes=4, size=8, channels=1)
    x = (train.images.float() / 255 - 0.5) / 0.25
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(x), train.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize("kw", [{"classes": 1}, {"samples": 0}, {"size": 0}, {"channels": 0}])
def test_bad_sizes(kw):
    with pytest.raises(DataError):
        make_synthetic(**kw)
