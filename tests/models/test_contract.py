"""The staged contract in code: our ResNets follow it, and a model that does not is named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resdist.deploy
import resdist.models.fold
from resdist.distill import FeatureKD, HintonKD, ResidualDistiller
from resdist.models import (
    StagedModel,
    StageMismatchError,
    check_staged,
    create_model,
    from_torchvision,
    last_bn_of,
)


def test_resnets_and_plain_nets_follow_the_contract():
    for name in ("resnet20", "plain20", "plain18"):
        m = create_model(name, num_classes=3, in_chans=1)
        assert isinstance(m, StagedModel)
        assert len(m.stages) == m.num_stages == len(m.stage_channels)
        assert last_bn_of(m) is m.stages[-1][-1].bn2
        assert m.stages[-1][-1].last_bn() is last_bn_of(m)


def test_torchvision_adapter_gives_a_staged_model():
    torchvision = pytest.importorskip("torchvision")
    assert isinstance(from_torchvision(torchvision.models.resnet18(num_classes=4)), StagedModel)


def test_a_model_outside_the_contract_is_named():
    plain_cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU())
    assert not isinstance(plain_cnn, StagedModel)
    with pytest.raises(StageMismatchError, match="student .* no 'forward_stem'"):
        check_staged(plain_cnn, "student")
    with pytest.raises(StageMismatchError, match="no last BatchNorm"):
        last_bn_of(plain_cnn)
    with pytest.raises(StageMismatchError, match="teacher"):
        FeatureKD(plain_cnn, create_model("plain20", num_classes=3, in_chans=1))


def test_objectives_say_which_state_they_rebuild():
    t = create_model("resnet20", num_classes=3, in_chans=1, width_mult=0.25)
    s = create_model("plain20", num_classes=3, in_chans=1, width_mult=0.25)
    frozen = ResidualDistiller(t, s)
    assert frozen.rebuilt_state == ("teacher.", "teacher_folded.")
    assert any(k.startswith("teacher_folded.") for k in frozen.state_dict())
    assert ResidualDistiller(t, s, train_teacher=True).rebuilt_state == ()
    assert HintonKD(t, s).rebuilt_state == ("teacher.", "teacher_folded.")
    out = frozen.teacher_compute(torch.zeros(2, 1, 8, 8))
    assert out.shape == (2, 3)


def test_deploy_reexports_the_model_transforms():
    for name in ("to_deploy", "fuse_conv_bn", "fold_batchnorms", "calibrate_bn"):
        assert getattr(resdist.deploy, name) is getattr(resdist.models.fold, name)
