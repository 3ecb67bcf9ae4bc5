"""Checkpoints: plain data only (weights-only loadable), RNG round trip, refusal of files
whose pickle carries code, atomic writes that keep the previous file on failure."""

import errno
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from resdist.engine.checkpoint import (
    CheckpointError,
    load_checkpoint,
    model_from_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from resdist.models import create_model
from resdist.safe_load import UnsafeFileError


class Payload:
    """Pickles as a call to ``open(marker, "w")``: loading it with full pickle creates the
    marker file, which is how the tests see whether any code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def write_malicious(path: Path, marker: Path, **extra) -> Path:
    """A ``.pth`` shaped like a resdist checkpoint whose pickle runs code when fully loaded."""
    torch.save({"model": Payload(marker), "model_name": "plain20", **extra}, path)
    return path


def test_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "marker"
    path = write_malicious(tmp_path / "evil.pth", marker)
    with pytest.raises(UnsafeFileError, match="resdist will not execute it"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the payload is real: full unpickling runs it
    assert marker.exists()


def _checkpoint(tmp_path) -> Path:
    model = create_model("plain20", num_classes=3, in_chans=1, width_mult=0.25)
    state = {"model": model.state_dict(), "model_name": "plain20",
             "model_kwargs": {"num_classes": 3, "in_chans": 1, "width_mult": 0.25},
             "epoch": 1, "rng": rng_state(), "config": {"train": {"seed": 0}}}
    return save_checkpoint(state, tmp_path / "last.pth")


def test_resdist_checkpoint_loads_with_plain_weights_only_torch_load(tmp_path):
    path = _checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["model_name"] == "plain20" and ckpt["epoch"] == 1
    model = model_from_checkpoint(path)
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 3)


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    np.random.normal()  # a cached Gaussian in NumPy's state
    save_checkpoint({"rng": rng_state()}, tmp_path / "r.pth")
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_weights_that_do_not_fit_the_model_are_one_error(tmp_path):
    path = _checkpoint(tmp_path)
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_name"] = "plain32"  # another depth: keys missing/unexpected
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(ckpt)
    ckpt["model_name"], ckpt["model_kwargs"]["num_classes"] = "plain20", 5  # shapes differ
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(ckpt)


def test_failed_write_keeps_the_previous_checkpoint_and_no_temporary(tmp_path, monkeypatch):
    path = _checkpoint(tmp_path)
    before = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CheckpointError, match="no space left on the device"):
        save_checkpoint({"model": {}}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_evaluating_an_empty_set_is_an_error():
    from resdist.data import DataError
    from resdist.engine import evaluate

    model = create_model("plain20", num_classes=3, in_chans=1, width_mult=0.25)
    with pytest.raises(DataError, match="evaluation set is empty"):
        evaluate(model, [])
