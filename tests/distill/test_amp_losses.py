"""Every method's losses are computed in float32 under fp16/bf16 autocast (the networks alone
run in low precision), so they stay finite where an fp16 sum would overflow."""

import pytest
import torch

from resdist.distill import CrossEntropy, FeatureKD, HintonKD, ResidualDistiller
from resdist.distill.losses import margin_feature_loss
from resdist.models import create_model


def _objective(method: str):
    torch.manual_seed(0)
    kw = {"num_classes": 4, "in_chans": 1, "width_mult": 0.25}
    student = create_model("plain20", **kw)
    if method == "ce":
        return CrossEntropy(student)
    teacher = create_model("resnet20", **kw)
    if method == "kd":
        return HintonKD(teacher, student)
    if method == "feature-kd":
        return FeatureKD(teacher, student, feature_weight=1e-3)
    return ResidualDistiller(teacher, student, feature_weight=1e-3, input_shape=(1, 16, 16))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
@pytest.mark.parametrize("method", ["ce", "kd", "feature-kd", "jointrd"])
def test_each_method_trains_a_few_autocast_steps_with_finite_fp32_losses(method, dtype):
    objective = _objective(method)
    params = [p for p in objective.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    # images scaled up: the margin feature loss then exceeds fp16's range (65504) at once
    images = 30 * torch.randn(8, 1, 16, 16, generator=g)
    labels = torch.randint(0, 4, (8,), generator=g)
    for step in range(3):
        objective.set_progress(step / 3, 1)
        with torch.autocast("cpu", dtype=dtype):
            out = objective(images, labels)
        terms = {k: v for k, v in out.items() if k != "logits"}
        for name, value in terms.items():
            assert value.dtype == torch.float32, (name, value.dtype)
            assert torch.isfinite(value).all(), (step, name, value)
        opt.zero_grad()
        out["loss"].backward()
        assert all(torch.isfinite(p.grad).all() for p in params if p.grad is not None)
        opt.step()
    if method in ("feature-kd", "jointrd"):
        feat = terms.get("feat", terms.get("feat_student"))
        assert feat > 65504  # would have been inf if summed in fp16


def test_margin_loss_sums_in_fp32_from_fp16_features():
    s = torch.full((4, 8, 8, 8), 20.0, dtype=torch.float16)
    t = torch.zeros_like(s)
    loss = margin_feature_loss(s, t, -torch.ones(8))
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(400.0 * 8 * 8 * 8)  # per image: 512 elements x 20^2
    assert torch.isinf((s - t).pow(2).sum())  # the same sum in fp16 overflows
