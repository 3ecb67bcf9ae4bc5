import math

import pytest
import torch

from resdist.config import OptimConfig
from resdist.distill import (
    FeatureKD,
    HintonKD,
    ResidualDistiller,
    StageMismatchError,
    bn_margins,
    decay_factor,
    margin_feature_loss,
)
from resdist.engine import build_optimizer
from resdist.models import DiracConv2d, create_model


def _pair(depth=20, **skw):
    teacher = create_model(f"resnet{depth}", num_classes=5, in_chans=1, width_mult=0.5)
    student = create_model(f"plain{depth}", num_classes=5, in_chans=1, width_mult=0.5, **skw)
    # give the teacher non-trivial BN statistics so that eval mode matters
    teacher.train()
    with torch.no_grad():
        for _ in range(3):
            teacher(torch.randn(16, 1, 16, 16) * 2 + 0.5)
    return teacher, student


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 16, 16, generator=g), torch.randint(0, 5, (n,), generator=g)


def test_teacher_never_changes():
    teacher, student = _pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = ResidualDistiller(teacher, student, input_shape=(1, 16, 16))
    d.train()
    assert not teacher.training and student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    opt = build_optimizer(d, OptimConfig(lr=0.1))
    for i in range(4):
        x, y = _batch(seed=i)
        d.set_progress(i / 4, 1)
        loss = d(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = teacher.state_dict()
    for k, v in before.items():
        assert torch.equal(v, after[k]), k
    assert all(p.grad is None for p in teacher.parameters())
    # the student did change
    assert any(not torch.equal(a, b) for a, b in zip(student.state_dict().values(),
                                                     create_model("plain20", num_classes=5, in_chans=1, width_mult=0.5).state_dict().values()))


def test_path1_gradient_reaches_only_early_student_stages():
    teacher, student = _pair()
    d = ResidualDistiller(teacher, student, feature_weight=0.0)
    d.train()
    x, y = _batch()
    out = d.paths(x)
    torch.nn.functional.cross_entropy(out["path_logits"][0], y).backward()

    def grad_norm(mod):
        return sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)

    assert grad_norm(student.conv1) > 0 and grad_norm(student.bn1) > 0
    assert grad_norm(student.layer1) > 0
    assert grad_norm(student.layer2) == 0 and grad_norm(student.layer3) == 0
    assert grad_norm(student.fc) == 0
    assert all(p.grad is None for p in teacher.parameters())


def test_mixed_paths_equal_running_teacher_stages_separately():
    teacher, student = _pair()
    d = ResidualDistiller(teacher, student, feature_weight=0.0)
    d.train()
    x, _ = _batch()
    out = d.paths(x)
    with torch.no_grad():
        h1 = student.forward_stages(student.forward_stem(x), 0, 1)
        z1 = teacher.forward_head(teacher.forward_stages(h1, 1, 3))
        h2 = student.forward_stages(h1, 1, 2)
        z2 = teacher.forward_head(teacher.forward_stages(h2, 2, 3))
    # the student was in train mode in paths(); recompute its stages in train mode as well
    torch.testing.assert_close(out["path_logits"][0], z1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out["path_logits"][1], z2, atol=1e-5, rtol=1e-4)


def test_stage_mismatch_is_reported():
    teacher = create_model("resnet20", num_classes=5, in_chans=1)
    student = create_model("plain20", num_classes=5, in_chans=1, width_mult=0.5)
    with pytest.raises(StageMismatchError, match="stage 1"):
        ResidualDistiller(teacher, student)
    student = create_model("plain20", num_classes=7, in_chans=1)
    with pytest.raises(StageMismatchError, match="classes"):
        ResidualDistiller(teacher, student, input_shape=(1, 16, 16))
    with pytest.raises(StageMismatchError, match="stages"):
        ResidualDistiller(create_model("resnet18", num_classes=5), student)


@pytest.mark.parametrize("kw,match", [({"dc": 2.0}, "dc must lie in"),
                                      ({"path_loss": "mse"}, "unknown path loss path_loss")])
def test_bad_settings_raise_the_config_check(kw, match):
    from resdist.config import ConfigError

    teacher, student = _pair()
    with pytest.raises(ConfigError, match=match):
        ResidualDistiller(teacher, student, **kw)


@pytest.mark.parametrize("e", [0.0, 7.5, 15.0, 29.9, 30.0, 45.0])
def test_decay_factor_formula(e):
    dc, decay_epochs = 0.5, 30.0
    expect = dc + (1 - dc) * (1 + math.cos(math.pi * e / decay_epochs)) / 2 if e <= 30 else dc
    assert decay_factor(e, decay_epochs, dc) == pytest.approx(expect)
    assert decay_factor(0, 30, dc) == 1.0 and decay_factor(100, 30, dc) == dc


def test_distiller_decay_follows_run_fraction():
    teacher, student = _pair()
    d = ResidualDistiller(teacher, student, dc=0.2, decay_fraction=0.3, feature_weight=0.0)
    d.set_progress(1.5, 10)  # decay_epochs = 3
    assert d.decay == pytest.approx(0.2 + 0.8 * 0.5)
    d.set_progress(5, 10)
    assert d.decay == pytest.approx(0.2)


def test_loss_matches_the_paper_formula_and_lambda_zero_removes_feature_term():
    teacher, student = _pair()
    x, y = _batch()
    d = ResidualDistiller(teacher, student, feature_weight=1e-3)
    d.eval()
    d.set_progress(0.1, 1)
    out = d(x, y)
    m, w = d.decay, 1 / 3
    expect = w * (m * out["ce_paths"] + out["ce_student"]) + w * 1e-3 * (
        m * out["feat_paths"] + out["feat_student"])
    torch.testing.assert_close(out["loss"].detach(), expect)

    calls = []
    handle = teacher.conv1.register_forward_hook(lambda *a: calls.append(1))
    d0 = ResidualDistiller(teacher, student, feature_weight=0.0)
    d0.eval()
    d0.set_progress(0.1, 1)
    out0 = d0(x, y)
    handle.remove()
    assert "feat_student" not in out0 and not hasattr(d0, "connectors")
    assert calls == []  # the teacher's own forward is skipped
    torch.testing.assert_close(
        out0["loss"].detach(), w * (m * out0["ce_paths"] + out0["ce_student"]))
    torch.testing.assert_close(out0["ce_student"], out["ce_student"])


def test_bn_margins_against_monte_carlo():
    bn = torch.nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -0.5, 2.0, 0.1]))
        bn.bias.copy_(torch.tensor([0.0, 0.3, -1.0, 1.0]))  # last: P(X<0) ~ 1e-23 -> -3|gamma|
    margin = bn_margins(bn)
    g = torch.Generator().manual_seed(0)
    for c in range(3):
        s, mu = bn.weight[c].abs().item(), bn.bias[c].item()
        samples = mu + s * torch.randn(2_000_000, generator=g, dtype=torch.float64)
        mc = samples[samples < 0].mean().item()
        assert margin[c].item() == pytest.approx(mc, abs=0.01), c
    assert margin[3].item() == pytest.approx(-0.3)


def test_margin_loss_matches_reference():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 4, 5, 5, generator=g)
    t = torch.randn(3, 4, 5, 5, generator=g)
    margin = -torch.rand(4, generator=g)
    ref = 0.0
    for n in range(3):
        for c in range(4):
            for i in range(5):
                for j in range(5):
                    tt = max(t[n, c, i, j].item(), margin[c].item())
                    ss = s[n, c, i, j].item()
                    if ss > tt or t[n, c, i, j].item() > 0:
                        ref += (ss - tt) ** 2
    assert margin_feature_loss(s, t, margin).item() == pytest.approx(ref / 3, rel=1e-5)


def test_short_jointrd_run_lowers_loss():
    teacher, student = _pair(dirac=True)
    d = ResidualDistiller(teacher, student, feature_weight=1e-3)
    d.train()
    opt = build_optimizer(d, OptimConfig(lr=0.05))
    x, y = _batch(64, seed=3)
    losses = []
    for i in range(25):
        d.set_progress(i / 25, 1)
        loss = d(x, y)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


def test_dirac_alpha_beta_get_no_weight_decay():
    student = create_model("plain20", dirac=True)
    opt = build_optimizer(student, OptimConfig(weight_decay=5e-4))
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    dirac = [m for m in student.modules() if isinstance(m, DiracConv2d)]
    assert dirac and all(id(m.alpha) in no_decay and id(m.beta) in no_decay for m in dirac)
    assert all(id(m.weight) not in no_decay for m in dirac)


def test_co_trained_teacher_gets_gradients():
    teacher, student = _pair()
    d = ResidualDistiller(teacher, student, train_teacher=True)
    d.train()
    assert teacher.training
    x, y = _batch()
    out = d(x, y)
    out["loss"].backward()
    assert "ce_teacher" in out
    assert teacher.conv1.weight.grad is not None and teacher.conv1.weight.grad.abs().sum() > 0


def test_baselines_return_losses_and_keep_teacher_frozen():
    teacher, student = _pair()
    x, y = _batch()
    for obj in (HintonKD(teacher, student), FeatureKD(teacher, student)):
        obj.train()
        out = obj(x, y)
        assert out["logits"].shape == (16, 5) and out["loss"].requires_grad
        out["loss"].backward()
        assert not teacher.training
        assert all(p.grad is None for p in teacher.parameters())


def test_jointrd_trains_a_repvgg_student_through_the_teachers_later_stages():
    from resdist.models import RepVGGConv2d

    teacher, student = _pair(repvgg=True)
    d = ResidualDistiller(teacher, student, feature_weight=0.0)
    d.train()
    x, y = _batch()
    out = d.paths(x)
    # path 1: student stem and stage 1, then the teacher's stages 2 and 3 and head
    torch.nn.functional.cross_entropy(out["path_logits"][0], y).backward()

    def branch_grads(module):
        layers = [m for m in module.modules() if isinstance(m, RepVGGConv2d)]
        return [(p.grad is not None and float(p.grad.abs().sum()) > 0)
                for m in layers
                for branch in (m.conv_kxk, m.bn_kxk, m.conv_1x1, m.bn_1x1, m.bn_identity)
                if branch is not None for p in branch.parameters()]

    early = branch_grads(student.layer1) + branch_grads(student.conv1)
    assert early and all(early)  # every branch, the identity BNs included
    assert not any(branch_grads(student.layer2) + branch_grads(student.layer3))
    assert all(p.grad is None for p in teacher.parameters())
    # the full objective reaches every branch of every stage
    student.zero_grad()
    d(x, y)["loss"].backward()
    assert all(branch_grads(student))
