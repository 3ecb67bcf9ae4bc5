import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield


def pytest_configure(config):
    # one intra-op thread per test process: with pytest-xdist workers sharing a few cores,
    # oversubscribed small-tensor ops run many times slower
    torch.set_num_threads(1)
