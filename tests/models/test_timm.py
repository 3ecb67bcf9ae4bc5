"""timm ResNets as teachers (and as the layout of the plain student), offline: every model is
built with ``pretrained=False`` or from a local weights file."""

import pytest
import torch
from torch import nn

from resdist.cli import main
from resdist.models import check_staged_pair, create_model, to_deploy
from resdist.models.errors import ModelError
from resdist.models.timm_adapter import from_timm, plain_counterpart

timm = pytest.importorskip("timm")


def _timm(name: str, **kwargs) -> nn.Module:
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).eval()
    for m in model.modules():  # non-trivial BN statistics, so that a wrong copy shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "resnet18d", "resnet50d"])
def test_a_timm_resnet_becomes_a_staged_resdist_resnet_computing_the_same(name):
    theirs = _timm(name)
    ours = from_timm(theirs).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
    assert ours.stem_type == ("deep" if name.endswith("d") else "imagenet")
    assert ours.avg_down == name.endswith("d")
    student = create_model(plain_counterpart(f"timm:{name}"), num_classes=5)
    assert student.count_shortcut_adds() == 0
    check_staged_pair(ours, student, (3, 64, 64))
    # the plain student has the teacher's layout: every tensor but the projections is shared
    shared = set(student.state_dict()) & set(theirs.state_dict())
    assert shared == {k for k in theirs.state_dict() if ".downsample." not in k}


@pytest.mark.parametrize("name", ["resnet18d", "resnet50d"])
def test_resdists_own_resnet_d_loads_timms_state_dict_strictly(name):
    theirs = _timm(name)
    ours = create_model(name, num_classes=5).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)
        deployed = to_deploy(ours, x)  # the deep stem's last conv folds into bn1 too
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())


def test_create_model_builds_timm_names_under_the_staged_contract():
    model = create_model("timm:resnet50d", num_classes=3, in_chans=1)
    assert model.stem_type == "deep" and model.count_shortcut_adds() == 16
    plain = create_model("timm:resnet18", num_classes=3, shortcuts=False, stem="cifar")
    assert plain.count_shortcut_adds() == 0 and plain(torch.randn(2, 3, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name, says", [
    ("timm:seresnet50", "se"), ("timm:resnext50_32x4d", "grouped"),
    ("timm:wide_resnet50_2", "wide"), ("timm:resnet10t", "stem"),
    ("timm:resnet50_gn", "GroupNorm"), ("timm:vit_tiny_patch16_224", "ResNet layout"),
    ("timm:nosuchnet", "timm has no model"),
])
def test_variants_resdist_does_not_build_are_refused_in_one_line(name, says):
    with pytest.raises(ModelError, match=says) as e:
        create_model(name, num_classes=3)
    assert "\n" not in str(e.value)


def test_timm_weights_are_fetched_through_timms_own_loading(tmp_path, monkeypatch):
    """``pretrained=TAG`` goes through timm's pretrained loading; here its download is served
    from a local file (timm's ``pretrained_cfg_overlay``), as the network would serve it."""
    published = _timm("resnet18d")
    path = tmp_path / "published.pth"
    torch.save(published.state_dict(), path)
    real = timm.create_model
    asked = []

    def local(name, **kwargs):
        asked.append((name, kwargs.get("pretrained")))
        if kwargs.get("pretrained"):
            kwargs["pretrained_cfg_overlay"] = {"file": str(path), "num_classes": 5}
        return real(name, **kwargs)

    monkeypatch.setattr(timm, "create_model", local)
    ours = create_model("timm:resnet18d", num_classes=5, pretrained="ra2_in1k").eval()
    assert ("resnet18d.ra2_in1k", True) in asked
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), published(x), rtol=1e-4, atol=1e-5)


def test_unreachable_timm_weights_and_a_missing_timm_are_one_line(monkeypatch):
    def offline(name, **kwargs):
        if kwargs.get("pretrained"):
            raise ConnectionError("no route to host\nmore detail")
        return real(name, **kwargs)

    real = timm.create_model
    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ModelError, match=r"could not load timm weights resnet50d\.a1_in1k "
                                         r"\(no route to host\); fetch them once"):
        create_model("timm:resnet50d", num_classes=3, pretrained="a1_in1k")
    import importlib

    real_import = importlib.import_module
    monkeypatch.setattr(importlib, "import_module", lambda n, *a: (
        (_ for _ in ()).throw(ImportError(n)) if n == "timm" else real_import(n, *a)))
    with pytest.raises(ModelError, match=r"pip install 'resdist\[timm\]'"):
        create_model("timm:resnet18", num_classes=3)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_jointrd_with_a_timm_teacher_file_then_export_of_the_plain_student(tmp_path, capsys,
                                                                           suffix):
    """A timm ResNet-18-D state dict (as timm saves it) teaches plain18d by JointRD for a step;
    the exported student has no shortcut Add."""
    onnx = pytest.importorskip("onnx")
    teacher = timm.create_model("resnet18d", pretrained=False, num_classes=4, in_chans=1)
    weights = tmp_path / f"teacher{suffix}"
    if suffix == ".pth":
        torch.save(teacher.state_dict(), weights)
    else:
        from safetensors.torch import save_file

        save_file(teacher.state_dict(), str(weights))
    run = tmp_path / "run"
    args = ["train", "--data", "synthetic", "--model", "plain18d", "--method", "jointrd",
            "--teacher", "timm:resnet18d", "--teacher-weights", str(weights), "--out", str(run),
            "--set", "data.synthetic_samples=16", "--set", "data.synthetic_size=32",
            "--set", "data.synthetic_channels=1", "--set", "data.synthetic_classes=4",
            "--set", "data.batch_size=8", "--set", "train.epochs=1",
            "--set", "train.progress=false", "--set", "train.tensorboard=false"]
    assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert f"weights {weights}" in out
    exported = tmp_path / "student.onnx"
    assert main(["export", "--checkpoint", str(run / "last.pth"), "--out", str(exported)]) == 0
    graph = onnx.load(str(exported)).graph
    assert not [n for n in graph.node if n.op_type == "Add"]


def test_a_resnet_d_state_dict_for_a_plain_resnet_names_the_layout_to_use(tmp_path):
    from resdist.models.pretrained import WeightsError, load_torchvision_weights

    path = tmp_path / "d.pth"
    torch.save(_timm("resnet18d").state_dict(), path)
    with pytest.raises(WeightsError, match=r"deep stem: use a resnetNd/plainNd model"):
        load_torchvision_weights(create_model("resnet18", num_classes=5), "resnet18", str(path))
    with pytest.raises(WeightsError, match="torchvision publishes no resnet50d weights: use "
                                           "--teacher timm:resnet50d"):
        load_torchvision_weights(create_model("resnet50d", num_classes=5), "resnet50d", "DEFAULT")


@pytest.mark.parametrize("name", ["repvgg_a0", "mobileone_s0"])
def test_timms_reparameterisable_networks_fold_through_timms_own_code(name, monkeypatch):
    """``timm:repvgg_a0`` / ``timm:mobileone_s0`` are built as timm defines them, offline, and
    ``to_deploy`` switches them to their deploy form through timm's ``reparameterize_model``."""
    import timm.utils.model

    from resdist.models import calibrate_bn

    calls = []
    real = timm.utils.model.reparameterize_model
    monkeypatch.setattr(timm.utils.model, "reparameterize_model",
                        lambda m, inplace=False: calls.append(m) or real(m, inplace=inplace))
    model = create_model(f"timm:{name}", num_classes=5, in_chans=3).double()
    assert type(model).__module__.startswith("timm.")
    calibrate_bn(model, 2, (3, 32, 32), 4)
    deployed = to_deploy(model)
    assert len(calls) == 1
    assert not any(isinstance(m, nn.BatchNorm2d) for m in deployed.modules())
    assert sum(p.numel() for p in deployed.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        ref, out = model(x), deployed(x)
    assert (out - ref).abs().max().item() <= 1e-5 * max(1.0, ref.abs().max().item())
    with pytest.raises(ModelError, match="takes no shortcuts=False"):
        create_model(f"timm:{name}", num_classes=5, shortcuts=False)


def test_profile_puts_timms_repvgg_and_mobileone_beside_resnet18_offline(tmp_path, capsys,
                                                                        monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # random weights: nothing is fetched
    out = tmp_path / "prof"
    assert main(["profile", "resnet18", "timm:repvgg_a0", "timm:mobileone_s0", "--input-size",
                 "32", "--no-latency", "--batch-sizes", "1", "--out", str(out)]) == 0
    import json

    result = json.loads(next(out.glob("*.json")).read_text())
    by = {m["name"]: m for m in result["models"]}
    assert by["resnet18"]["feature_adds"] == 8
    for name in ("timm:repvgg_a0", "timm:mobileone_s0"):
        assert by[name]["feature_adds"] == 0 and not by[name]["is_resnet"]
        assert "calibrated" in by[name]["weights"]
    assert {p["plain"] for p in result["pairs"]} == {"timm:repvgg_a0", "timm:mobileone_s0"}
