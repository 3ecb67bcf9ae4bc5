"""RepVGG-style student convs: the branches they train and their exact fold into one 3x3 conv."""

from __future__ import annotations

import pytest
import torch
from test_fold import randomize  # BN statistics and affine parameters that make folding matter
from torch import nn

from resdist.models import Bottleneck, RepVGGConv2d, ResNet, create_model, fold_repvgg
from resdist.models.errors import ModelError
from resdist.models.fold import to_deploy


@pytest.mark.parametrize(("cin", "cout", "stride", "identity"),
                         [(6, 6, 1, True), (6, 6, 2, False), (4, 6, 1, False)])
def test_layer_has_the_branches_its_shapes_allow_and_folds_exactly(cin, cout, stride, identity):
    layer = randomize(RepVGGConv2d(cin, cout, 3, stride, 1).double())
    assert (layer.bn_identity is not None) is identity
    x = torch.randn(3, cin, 9, 9, dtype=torch.float64)
    with torch.no_grad():
        expected = layer.bn_kxk(layer.conv_kxk(x)) + layer.bn_1x1(layer.conv_1x1(x))
        if identity:
            expected = expected + layer.bn_identity(x)
        conv = layer.to_conv()
        assert type(conv) is nn.Conv2d and conv.bias is not None
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=0)
        torch.testing.assert_close(conv(x), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize(("name", "kwargs"), [
    ("plain20", {}),
    ("plain18", {"stem": "deep"}),
])
def test_every_3x3_conv_trains_as_branches_and_the_student_folds_to_1e5(name, kwargs):
    model = create_model(name, num_classes=7, in_chans=3, repvgg=True, **kwargs)
    n3x3 = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)
               for m in create_model(name, num_classes=7, in_chans=3, **kwargs).modules())
    layers = [m for m in model.modules() if isinstance(m, RepVGGConv2d)]
    assert len(layers) == n3x3  # every 3x3 conv, the stem's included
    assert sum(m.bn_identity is not None for m in layers) > 0
    model = randomize(model.double())
    deployed = to_deploy(model)
    assert not any(isinstance(m, (RepVGGConv2d, nn.BatchNorm2d)) for m in deployed.modules())
    assert sum(p.numel() for p in deployed.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), deployed(x)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    assert model.training is False and any(isinstance(m, RepVGGConv2d) for m in model.modules())


def test_bottleneck_keeps_its_1x1_convs_and_folds():
    model = ResNet(Bottleneck, [1, 1], (4, 8), num_classes=3, in_chans=1, stem="cifar",
                   shortcuts=False, repvgg=True)
    blk = model.layer1[0]
    assert isinstance(blk.conv2, RepVGGConv2d) and isinstance(blk.bn2, nn.Identity)
    assert type(blk.conv1) is nn.Conv2d and isinstance(blk.bn1, nn.BatchNorm2d)
    model = randomize(model.double())
    x = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), to_deploy(model)(x)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())


def test_fold_repvgg_replaces_the_layers_in_place():
    model = randomize(create_model("plain20", num_classes=5, in_chans=1, width_mult=0.5,
                                   repvgg=True))
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        ref = model(x)
        fold_repvgg(model)
        out = model(x)
    assert not any(isinstance(m, RepVGGConv2d) for m in model.modules())
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_training_updates_every_branch():
    model = create_model("plain20", num_classes=5, in_chans=1, width_mult=0.5, repvgg=True)
    model.train()
    x, y = torch.randn(8, 1, 16, 16), torch.randint(0, 5, (8,))
    nn.functional.cross_entropy(model(x), y).backward()
    for layer in (m for m in model.modules() if isinstance(m, RepVGGConv2d)):
        branches = [layer.conv_kxk, layer.bn_kxk, layer.conv_1x1, layer.bn_1x1]
        branches += [layer.bn_identity] if layer.bn_identity is not None else []
        for branch in branches:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in branch.parameters())


def test_bad_layer_settings_are_model_errors():
    with pytest.raises(ModelError, match="odd square kernel"):
        RepVGGConv2d(4, 4, 2)
    with pytest.raises(ModelError, match="padding 1"):
        RepVGGConv2d(4, 4, 3, padding=0)
    with pytest.raises(ModelError, match="no bias"):
        RepVGGConv2d(4, 4, 3, bias=True)
    with pytest.raises(ModelError, match="choose one"):
        create_model("plain20", dirac=True, repvgg=True)
    with pytest.raises(ModelError, match="repvgg must be true or false"):
        create_model("plain20", repvgg="yes")
