"""Folding BatchNorm and Dirac kernels into convolutions is exact (docs/method.md section 7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resdist.models import Bottleneck, DiracConv2d, ResNet, create_model
from resdist.models.fold import calibrate_bn, fuse_conv_bn, to_deploy


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics/affine parameters and Dirac alpha/beta, so folding matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
            elif isinstance(m, DiracConv2d):
                m.alpha.copy_(torch.rand(m.out_channels, generator=gen) + 0.5)
                m.beta.copy_(torch.rand(m.out_channels, generator=gen) * 0.3)
    return model.eval()


def assert_folded_equal(model: nn.Module, x: torch.Tensor) -> nn.Module:
    deployed = to_deploy(model)
    assert type(deployed) is type(model)
    assert not any(isinstance(m, (nn.BatchNorm2d, DiracConv2d)) for m in deployed.modules())
    with torch.no_grad():
        ref, out = model(x), deployed(x)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    return deployed


def test_plain_dirac_student_folds_exactly():
    model = randomize(create_model("plain20", num_classes=10, in_chans=1, width_mult=0.5,
                                   dirac=True))
    assert any(isinstance(m, DiracConv2d) for m in model.modules())
    assert_folded_equal(model, torch.randn(3, 1, 16, 16))


def test_resnet_with_projections_folds_exactly():
    model = randomize(create_model("resnet20", num_classes=10, in_chans=3, width_mult=0.5))
    deployed = assert_folded_equal(model, torch.randn(3, 3, 16, 16))
    ds = deployed.layer2[0].downsample
    assert isinstance(ds[1], nn.Identity) and ds[0].bias is not None
    assert deployed.count_shortcut_adds() == model.count_shortcut_adds()


def test_bottleneck_and_kept_projection_fold_exactly():
    for kwargs in ({}, {"shortcuts": False, "keep_downsample_shortcuts": True, "dirac": True}):
        model = randomize(ResNet(Bottleneck, [2, 1], (4, 8), num_classes=5, in_chans=2,
                                 stem="imagenet", **kwargs), seed=1)
        assert_folded_equal(model, torch.randn(2, 2, 32, 32))


def test_to_deploy_leaves_original_untouched():
    model = randomize(create_model("resnet20", in_chans=1, width_mult=0.25)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    to_deploy(model)
    assert model.training
    assert isinstance(model.bn1, nn.BatchNorm2d)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fuse_conv_bn_with_bias_and_groups():
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2, bias=True)
    bn = randomize(nn.Sequential(nn.BatchNorm2d(6)))[0]
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        assert torch.allclose(fuse_conv_bn(conv, bn)(x), bn(conv(x)), atol=1e-5)


class _BnAfterRelu(nn.Module):
    """conv1/bn1 by name, but the BN does not follow the conv directly: folding is wrong."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn1(torch.relu(self.conv1(x)))


def test_example_input_catches_a_wrong_fold():
    model = randomize(_BnAfterRelu())
    with pytest.raises(ValueError, match="differs"):
        to_deploy(model, example_input=torch.randn(2, 1, 5, 5))


def test_calibrate_bn_averages_batch_statistics_exactly():
    model = create_model("plain20", num_classes=10, in_chans=1, width_mult=0.5)
    batches = [torch.randn(4, 1, 8, 8) for _ in range(3)]
    calibrate_bn(model, num_batches=3, batches=iter(batches))
    assert not model.training
    assert model.bn1.momentum == 0.1  # restored
    with torch.no_grad():
        feats = [model.conv1(b) for b in batches]
    mean = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    var = torch.stack([f.var(dim=(0, 2, 3), unbiased=True) for f in feats]).mean(0)
    assert torch.allclose(model.bn1.running_mean, mean, atol=1e-5)
    assert torch.allclose(model.bn1.running_var, var, rtol=1e-4)
    assert int(model.bn1.num_batches_tracked) == 3


def test_calibrate_bn_gaussian_inputs_and_errors():
    model = create_model("plain20", in_chans=1, width_mult=0.25)
    calibrate_bn(model, num_batches=1, input_shape=(1, 8, 8), batch_size=4)
    assert not torch.allclose(model.bn1.running_var, torch.ones_like(model.bn1.running_var))
    with pytest.raises(ValueError, match="input_shape"):
        calibrate_bn(model)
