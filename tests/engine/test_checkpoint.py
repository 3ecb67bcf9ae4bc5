"""Checkpoints: plain data only (weights-only loadable), RNG round trip, refusal of files
whose pickle carries code, atomic writes that keep the previous file on failure."""

import errno
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from resdist.engine.checkpoint import (
    Checkpoint,
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
    state = Checkpoint("plain20", {"num_classes": 3, "in_chans": 1, "width_mult": 0.25},
                       model.state_dict(), epoch=1, rng=rng_state(),
                       config={"train": {"seed": 0}})
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
    torch.save({"rng": rng_state()}, tmp_path / "r.pth")
    expected = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    set_rng_state(torch.load(tmp_path / "r.pth", weights_only=True)["rng"])
    got = (random.random(), np.random.normal(), np.random.rand(), torch.rand(3))
    assert got[:3] == expected[:3] and torch.equal(got[3], expected[3])


def test_weights_that_do_not_fit_the_model_are_one_error(tmp_path):
    path = _checkpoint(tmp_path)
    ckpt = load_checkpoint(path)
    ckpt.model_name = "plain32"  # another depth: keys missing/unexpected
    with pytest.raises(CheckpointError, match="do not fit"):
        model_from_checkpoint(ckpt)
    ckpt.model_name, ckpt.model_kwargs["num_classes"] = "plain20", 5  # shapes differ
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
        save_checkpoint(Checkpoint("plain20", {}, {}), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pth"]


def test_evaluating_an_empty_set_is_an_error():
    from resdist.data import DataError
    from resdist.engine import evaluate

    model = create_model("plain20", num_classes=3, in_chans=1, width_mult=0.25)
    with pytest.raises(DataError, match="evaluation set is empty"):
        evaluate(model, [])


def _raw(tmp_path) -> dict:
    return torch.load(_checkpoint(tmp_path), weights_only=True)


@pytest.mark.parametrize("field, value, words", [
    ("model_name", "evil", "model_name 'evil' is not a model"),
    ("model_name", ["plain20"], "is not a model"),
    ("model_kwargs", "num_classes=3", "model_kwargs must be a mapping"),
    ("model_kwargs", {"num_classes": "3"}, "num_classes must be a whole number"),
    ("model_kwargs", {"num_classes": 3, "width_mult": float("nan")}, "width_mult must be"),
    ("model", [1, 2], "model must be a state dict"),
    ("model", {"fc.weight": "x"}, "model must be a state dict"),
    ("epoch", -1, "epoch must be a whole number"),
    ("epoch", "1", "epoch must be a whole number"),
    ("config", ["data"], "config must be a mapping"),
    ("config", "data: x", "config must be a mapping"),
    ("optimizer", [0], "optimizer must be a mapping"),
    ("metrics", {"test_top1": "high"}, "metrics.test_top1 must be a number"),
    ("input_contract", {"input_shape": [1, 8, 8]}, "input contract lacks"),
    ("input_shape", [1, "8", 8], r"input_shape must be \[C, H, W\]"),
])
def test_every_field_of_a_strangers_checkpoint_is_checked(tmp_path, field, value, words):
    raw = _raw(tmp_path)
    raw["config"] = {"data": {"name": "synthetic"}}  # so that a legacy input_shape is read
    raw[field] = value
    path = tmp_path / "odd.pth"
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=words) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("change, words", [
    (lambda t: t.fill_(float("nan")), "holds NaN or infinite values"),
    (lambda t: t.to(torch.complex64), "is complex"),
])
def test_weights_that_are_not_real_numbers_are_refused(tmp_path, change, words):
    raw = _raw(tmp_path)
    raw["model"]["conv1.weight"] = change(raw["model"]["conv1.weight"])
    torch.save(raw, tmp_path / "odd.pth")
    with pytest.raises(CheckpointError, match=words):
        load_checkpoint(tmp_path / "odd.pth")


def test_integer_weights_do_not_fit_a_float_model(tmp_path):
    raw = _raw(tmp_path)
    raw["model"] = {k: v.long() if v.is_floating_point() else v for k, v in raw["model"].items()}
    torch.save(raw, tmp_path / "int.pth")
    with pytest.raises(CheckpointError, match="is torch.int64, the model keeps torch.float32"):
        model_from_checkpoint(tmp_path / "int.pth")


def test_absurd_sizes_are_refused_before_anything_is_allocated(tmp_path):
    raw = _raw(tmp_path)
    raw["model_kwargs"]["num_classes"] = 10**9
    torch.save(raw, tmp_path / "huge.pth")
    ckpt = load_checkpoint(tmp_path / "huge.pth")  # the record itself is well-formed
    with pytest.raises(CheckpointError, match="more than the .* of memory free"):
        ckpt.build_model()


def test_contract_must_agree_with_the_model(tmp_path):
    from resdist.data.contract import contract_for_data

    model = create_model("plain20", num_classes=3, in_chans=1, width_mult=0.25)
    for chans, classes, words in ((3, 3, "3 channels, the model 1"),
                                  (1, 5, "names 5 classes, the model has 3")):
        contract = contract_for_data("synthetic", in_chans=chans, image_size=8,
                                     num_classes=classes)
        with pytest.raises(CheckpointError, match=words):
            Checkpoint("plain20", {"num_classes": 3, "in_chans": 1, "width_mult": 0.25},
                       model.state_dict(), contract=contract)


def test_weights_only_copy_drops_the_training_state_and_round_trips(tmp_path):
    ckpt = load_checkpoint(_checkpoint(tmp_path))
    small = ckpt.weights_only()
    assert ckpt.rng is not None and small.rng is None and small.epoch == ckpt.epoch
    small.save(tmp_path / "w.pth")
    again = load_checkpoint(tmp_path / "w.pth")
    assert again.model_name == "plain20" and again.rng is None
    assert all(torch.equal(again.state_dict[k], v) for k, v in ckpt.state_dict.items())


# every key of the file format; "model", "config", "metrics" and "epoch" are too common a word
# to search for, the distinctive ones stand for the format
FORMAT_KEYS = {"model_name", "model_kwargs", "input_contract", "input_shape", "optimizer",
               "scheduler", "objective", "scaler", "rng"}


def test_no_module_but_the_checkpoint_record_indexes_the_raw_dict():
    """``ckpt["model_name"]`` or ``ckpt.get("model_kwargs")`` outside engine/checkpoint.py would
    be a second owner of the format; variables named like checkpoints may not be indexed by
    any string at all."""
    import ast

    import resdist

    root = Path(resdist.__file__).parent
    owner = root / "engine" / "checkpoint.py"
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == owner:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            key, target = None, None
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
                key, target = node.slice.value, node.value
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "get" and node.args
                  and isinstance(node.args[0], ast.Constant)):
                key, target = node.args[0].value, node.func.value
            if not isinstance(key, str):
                continue
            name = target.id if isinstance(target, ast.Name) else ""
            if "ckpt" in name or "checkpoint" in name or (
                    key in FORMAT_KEYS and name in ("state", "raw", "d", "loaded")):
                found.append(f"{path.relative_to(root)}:{node.lineno} {name}[{key!r}]")
    assert found == []
