import pytest
import torch
import torchvision

from resdist.models import (
    BasicBlock,
    Bottleneck,
    DiracConv2d,
    UnknownModelError,
    create_model,
    fold_dirac,
    list_models,
)
from resdist.models.pretrained import WeightsError, load_torchvision_weights

THIN = [f"{k}{d}" for k in ("resnet", "plain") for d in (8, 14, 20, 32, 44, 56, 110)]
WIDE = [f"{k}{d}" for k in ("resnet", "plain") for d in (18, 34, 50)]


def test_registry_lists_every_pair():
    assert set(THIN + WIDE) <= set(list_models())


def test_unknown_model_lists_valid_names():
    with pytest.raises(UnknownModelError, match="plain56") as e:
        create_model("plain57")
    assert "resnet18" in str(e.value)


@pytest.mark.parametrize("name", THIN)
def test_thin_shapes(name):
    m = create_model(name, num_classes=7, in_chans=1).eval()
    x = torch.randn(2, 1, 28, 28)
    assert m(x).shape == (2, 7)
    assert m.forward_features(x).shape == (2, 64, 7, 7)
    assert m.stage_channels == [16, 32, 64]


@pytest.mark.parametrize("name", WIDE)
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_wide_shapes(name, stem):
    m = create_model(name, num_classes=10, stem=stem).eval()
    size = 64 if stem == "imagenet" else 32
    x = torch.randn(1, 3, size, size)
    assert m(x).shape == (1, 10)
    exp = 4 if name.endswith("50") else 1
    h = m.forward_stem(x)
    sizes = [32, 16, 8, 4] if stem == "cifar" else [16, 8, 4, 2]
    for i in range(4):
        h = m.forward_stages(h, i, i + 1)
        assert h.shape[1:] == (m.stage_channels[i], sizes[i], sizes[i])
        assert m.stage_channels[i] == [64, 128, 256, 512][i] * exp


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50"])
def test_torchvision_state_dict_round_trip(arch):
    tv = getattr(torchvision.models, arch)()
    ours = create_model(arch)
    ours.load_state_dict(tv.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(tv.state_dict())
    tv.eval(), ours.eval()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x))


def test_torchvision_weights_file_and_class_mismatch(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    m = load_torchvision_weights(create_model("resnet18"), "resnet18", str(path))
    assert isinstance(m.layer1[0], BasicBlock)
    with pytest.raises(WeightsError, match="class count"):
        load_torchvision_weights(create_model("resnet18", num_classes=10), "resnet18", str(path))
    with pytest.raises(WeightsError, match="stem"):
        load_torchvision_weights(create_model("resnet18", stem="cifar"), "resnet18", str(path))


@pytest.mark.parametrize("depth", [20, 50])
def test_plain_differs_from_resnet_only_by_shortcuts(depth):
    kw = {"num_classes": 10, "stem": "cifar"} if depth == 50 else {"num_classes": 10}
    res = create_model(f"resnet{depth}", **kw).eval()
    plain = create_model(f"plain{depth}", **kw).eval()
    res_sd, plain_sd = res.state_dict(), plain.state_dict()
    # the plain net's tensors are exactly the ResNet's minus the projection shortcuts
    assert set(plain_sd) == {k for k in res_sd if ".downsample." not in k}
    plain.load_state_dict({k: v for k, v in res_sd.items() if k in plain_sd})
    x = torch.randn(2, 3, 32, 32)
    assert not torch.allclose(plain(x), res(x))
    for m in res.modules():  # switching the shortcuts off turns the ResNet into the plain net
        if isinstance(m, BasicBlock | Bottleneck):
            m.shortcut = False
    torch.testing.assert_close(res(x), plain(x))


def test_shortcut_counts():
    assert create_model("resnet56").count_shortcut_adds() == 27
    assert create_model("plain56").count_shortcut_adds() == 0
    keep = create_model("plain56", keep_downsample_shortcuts=True)
    assert keep.count_shortcut_adds() == 2
    assert keep.layer2[0].downsample is not None and keep.layer1[0].downsample is None
    keep50 = create_model("plain50", keep_downsample_shortcuts=True)
    assert keep50.count_shortcut_adds() == 3  # stride-2 blocks of stages 2..4 only
    with pytest.raises(ValueError, match="plain"):
        create_model("resnet56", keep_downsample_shortcuts=True)


def test_resnet8_has_mlperf_tinys_layout_and_plain20_the_same_widest_maps():
    from resdist.models import parameter_count

    net = create_model("resnet8")
    assert [len(net.layer1), len(net.layer2), len(net.layer3)] == [1, 1, 1]
    assert net.conv1.kernel_size == (3, 3) and net.conv1.out_channels == 16
    # 1x1 projection shortcuts at the two stride-2 stages only, one Add per block
    assert net.layer1[0].downsample is None
    assert [net.layer2[0].downsample[0].kernel_size, net.layer3[0].downsample[0].stride] == [
        (1, 1), (2, 2)]
    assert net.count_shortcut_adds() == 3 and create_model("plain8").count_shortcut_adds() == 0
    # MLPerf Tiny's Keras model: 78,186 trainable parameters; it has conv biases (336) and no BN
    # on the projections (192 here): 78,186 - 336 + 192
    assert parameter_count("resnet8") == 78_186 - 336 + 192
    assert parameter_count("plain8") == parameter_count("resnet8") - (512 + 64 + 2048 + 128)
    x = torch.randn(1, 3, 32, 32)

    def maps(name):  # the stem's and each stage's output shape
        m = create_model(name).eval()
        h = m.forward_stem(x)
        shapes = [tuple(h.shape)]
        for i in range(m.num_stages):
            h = m.forward_stages(h, i, i + 1)
            shapes.append(tuple(h.shape))
        return shapes

    assert maps("resnet8") == maps("plain20") == [
        (1, 16, 32, 32), (1, 16, 32, 32), (1, 32, 16, 16), (1, 64, 8, 8)]


def test_width_mult_and_in_chans():
    m = create_model("plain20", width_mult=2.0, in_chans=5, num_classes=3)
    assert m.stage_channels == [32, 64, 128]
    assert m(torch.randn(1, 5, 16, 16)).shape == (1, 3)


def test_pre_relu_feature_is_the_feature_before_the_last_relu():
    m = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    h = m.forward_stem(x)
    pre = m.forward_stages(h, pre_relu=True)
    assert (pre < 0).any()
    torch.testing.assert_close(torch.relu(pre), m.forward_stages(h))


@pytest.mark.parametrize("cin,cout,stride", [(8, 8, 1), (8, 8, 2), (8, 16, 2), (16, 8, 1)])
def test_dirac_identity_and_fold(cin, cout, stride):
    conv = DiracConv2d(cin, cout, 3, stride=stride, padding=1)
    x = torch.randn(2, cin, 9, 9)
    with torch.no_grad():
        conv.beta.zero_()
        ident = conv(x)
    n = min(cin, cout)
    torch.testing.assert_close(ident[:, :n], x[:, :n, ::stride, ::stride])
    assert ident[:, n:].abs().sum() == 0
    with torch.no_grad():
        conv.alpha.uniform_(0.5, 1.5)
        conv.beta.uniform_(-0.5, 0.5)
    folded = conv.to_conv()
    assert type(folded) is torch.nn.Conv2d
    assert (folded(x) - conv(x)).abs().max() < 1e-5


def test_fold_dirac_whole_model():
    m = create_model("plain20", dirac=True).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, DiracConv2d):
                mod.alpha.uniform_(0.5, 1.5)
                mod.beta.uniform_(-0.3, 0.3)
    x = torch.randn(2, 3, 32, 32)
    before = m(x)
    fold_dirac(m)
    assert not any(isinstance(mod, DiracConv2d) for mod in m.modules())
    assert (m(x) - before).abs().max() < 1e-5


def test_from_torchvision_adapter_matches_and_serves_as_teacher():
    from resdist.distill import ResidualDistiller
    from resdist.models import from_torchvision

    tv = torchvision.models.resnet18(num_classes=10).eval()
    ours = from_torchvision(tv).eval()
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), tv(x))
    student = from_torchvision(tv, shortcuts=False)
    assert student.count_shortcut_adds() == 0
    torch.testing.assert_close(student.layer3[1].conv2.weight, tv.layer3[1].conv2.weight)
    d = ResidualDistiller(ours, student, input_shape=(3, 64, 64), feature_weight=0.0)
    assert len(d.paths(x)["path_logits"]) == 3
