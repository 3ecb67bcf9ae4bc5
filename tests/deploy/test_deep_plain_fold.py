"""Deep plain networks with BatchNorm-calibrated weights pass the fold check and export; a wrong
fold is still refused. A deep plain network amplifies float32 rounding far past any fixed float32
limit, so the check compares in float64 (resdist.models.fold.to_deploy)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resdist.deploy import export
from resdist.models import create_model
from resdist.models import fold as fold_module
from resdist.models.errors import ModelError
from resdist.models.fold import calibrate_bn, to_deploy

#: thin CIFAR-style networks at 16x16, the ImageNet-width bottleneck network at 32x32 (1x1 after
#: its five halvings): small inputs and four images per BatchNorm statistic keep this fast
CASES = {"plain56": (3, 16, 16), "plain110": (3, 16, 16), "plain50": (3, 32, 32)}


@pytest.fixture(scope="module")
def calibrated() -> dict[str, nn.Module]:
    torch.manual_seed(0)
    models = {}
    for name, shape in CASES.items():
        model = create_model(name, num_classes=10, in_chans=3)
        models[name] = calibrate_bn(model, num_batches=2, input_shape=shape, batch_size=4)
    return models


@pytest.mark.parametrize("name", list(CASES))
def test_calibrated_deep_plain_network_folds_and_exports(calibrated, tmp_path, name):
    model, shape = calibrated[name], CASES[name]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    deployed = to_deploy(model, torch.randn(2, *shape))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert all(p.dtype == torch.float32 for p in deployed.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the checked float64 fold, rounded once, is the float32 fold itself
    unchecked = to_deploy(model).state_dict()
    assert all(torch.equal(unchecked[k], v) for k, v in deployed.state_dict().items())
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    report = export(model, "onnx", tmp_path / f"{name}.onnx", input_shape=shape, opset=17)
    assert report.feature_adds == 0 and report.max_rel_error is not None
    assert (tmp_path / f"{name}.onnx").stat().st_size > 0


def test_a_wrong_fold_is_still_refused(calibrated, monkeypatch):
    """One folded weight off by 1% in one output channel of one convolution: refused."""
    real, calls = fold_module.fuse_conv_bn, []

    def perturbed(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        fused = real(conv, bn)
        calls.append(fused)
        if len(calls) == 10:
            with torch.no_grad():
                fused.weight[0].mul_(1.01)
        return fused

    monkeypatch.setattr(fold_module, "fuse_conv_bn", perturbed)
    with pytest.raises(ModelError, match=r"differs from the original by .* of its output scale"):
        to_deploy(calibrated["plain56"], torch.randn(2, *CASES["plain56"]))
    assert len(calls) > 10
