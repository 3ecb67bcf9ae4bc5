"""The training loop does not make the host wait for the device at every step."""

from __future__ import annotations

import pytest
import torch

from resdist.config import Config
from resdist.engine import trainer as trainer_mod
from resdist.engine.trainer import Trainer, train


def _count_syncs(monkeypatch, cfg: Config) -> int:
    """Host synchronisations (``item``, ``__bool__``, ``tolist``) made inside ``train_epoch``."""
    count = {"n": 0, "inside": False}
    for name in ("item", "__bool__", "tolist"):
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _original=original, **k):
            if count["inside"]:
                count["n"] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    epoch = Trainer.train_epoch

    def watched(self, e):
        count["inside"] = True
        try:
            return epoch(self, e)
        finally:
            count["inside"] = False

    monkeypatch.setattr(Trainer, "train_epoch", watched)
    train(cfg)
    return count["n"]


@pytest.mark.parametrize("method", ["ce", "jointrd"])
def test_host_syncs_per_epoch_do_not_grow_with_the_number_of_steps(
    monkeypatch, tmp_path, tiny_run, method
):
    def cfg(samples: int, out: str) -> Config:
        c = Config.from_dict(tiny_run).override([
            f"train.out={tmp_path / out}", f"data.synthetic_samples={samples}",
            "train.epochs=1", f"distill.method={method}", "teacher.train=true",
            "train.check_every=1000",
        ])
        return c

    few = _count_syncs(monkeypatch, cfg(64, "few"))  # 2 steps
    many = _count_syncs(monkeypatch, cfg(256, "many"))  # 8 steps
    assert many == few
    assert few <= 3  # the finiteness check at the epoch's end and the metric totals


def test_non_finite_loss_is_caught_at_the_next_check_and_names_the_steps(
    monkeypatch, tmp_path, tiny_run
):
    step = trainer_mod.accumulation_step
    calls = {"n": 0}

    def poisoned(module, optimizer, scaler, micro_batches, amp_dtype=None):
        calls["n"] += 1
        outs = step(module, optimizer, scaler, micro_batches, amp_dtype)
        if calls["n"] == 2:
            outs[-1]["loss"] = outs[-1]["loss"] * float("nan")
        return outs

    monkeypatch.setattr(trainer_mod, "accumulation_step", poisoned)
    cfg = Config.from_dict(tiny_run).override([f"train.out={tmp_path}", "train.check_every=3"])
    with pytest.raises(FloatingPointError, match=r"epoch 1, steps 0-2"):
        train(cfg)
