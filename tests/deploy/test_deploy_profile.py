"""Liveness figures against hand-computed networks, docs/method.md's thin-net targets, reports."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from resdist.deploy import (  # noqa: E402
    DeployError,
    ProfileResult,
    analyze_onnx,
    export_onnx,
    format_table,
    memory_cross_check,
    merge_profiles,
    profile_models,
    write_profile_report,
)
from resdist.engine.denormals import flushing_denormals, set_flush_denormal  # noqa: E402

F32 = 4


class Chain(nn.Module):
    """2x8x8 -> conv(4) -> relu -> conv(8) -> relu -> pool -> flatten -> linear(3)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=1)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class Residual(nn.Module):
    """1x8x8 -> conv0+relu = x (4x8x8) -> relu(conv2(relu(conv1(x))) [+ x]) -> pool -> fc(2)."""

    def __init__(self, shortcut: bool) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.conv0 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv0(x))
        out = self.conv2(torch.relu(self.conv1(x)))
        if self.shortcut:
            out = out + x
        out = torch.relu(out)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


@pytest.fixture(scope="module")
def chain_onnx(tmp_path_factory):
    return export_onnx(Chain().eval(), tmp_path_factory.mktemp("c") / "chain.onnx", (2, 8, 8))


@pytest.fixture(scope="module")
def residual_onnx(tmp_path_factory):
    d = tmp_path_factory.mktemp("r")
    return {
        s: export_onnx(Residual(s).eval(), d / f"res{s}.onnx", (1, 8, 8)) for s in (True, False)
    }


def test_chain_matches_hand_computation(chain_onnx):
    inp, a, b, pooled, logits = 2 * 64 * F32, 4 * 64 * F32, 8 * 64 * F32, 8 * F32, 3 * F32
    g = analyze_onnx(chain_onnx, batch_size=1)
    # conv+relu steps hold their input and output: max(inp + a, a + b)
    assert g.peak_activation_bytes == a + b == 3072
    # reads + writes per step: conv1+relu, conv2+relu, pool, (flatten: alias), gemm
    assert g.bytes_moved == (inp + a) + (a + b) + (b + pooled) + (pooled + logits) == 6732
    assert g.macs == 4 * 64 * 2 * 9 + 8 * 64 * 4 * 9 + 8 * 3
    assert g.parameters == (2 * 4 * 9 + 4) + (4 * 8 * 9 + 8) + (8 * 3 + 3)
    assert g.input_bytes == inp and g.output_bytes == logits
    # batch scales every activation
    g4 = analyze_onnx(chain_onnx, batch_size=4)
    assert g4.peak_activation_bytes == 4 * 3072 and g4.macs == 4 * g.macs
    # separate, out-of-place ReLUs: relu2 holds conv2's output and its own
    unfused = analyze_onnx(chain_onnx, fuse_activations=False, inplace_ops=())
    assert unfused.peak_activation_bytes == 2 * b
    assert unfused.bytes_moved == g.bytes_moved + 2 * a + 2 * b
    # separate but in-place ReLUs: same peak as fused
    inplace = analyze_onnx(chain_onnx, fuse_activations=False, inplace_ops={"Relu"})
    assert inplace.peak_activation_bytes == a + b


def test_residual_block_keeps_its_input_alive(residual_onnx):
    inp, f = 64 * F32, 4 * 64 * F32
    res = analyze_onnx(residual_onnx[True])
    plain = analyze_onnx(residual_onnx[False])
    # conv2 runs while x (shortcut), relu(conv1 x) and its output are live
    assert res.peak_activation_bytes == 3 * f
    assert plain.peak_activation_bytes == 2 * f
    pooled, logits = 4 * F32, 2 * F32
    head = (f + pooled) + (pooled + logits)
    assert plain.bytes_moved == (inp + f) + (f + f) + (f + f) + head
    # ResNet: the Add reads two maps and writes one, its ReLU is a separate step
    assert res.bytes_moved == (inp + f) + (f + f) + (f + f) + 3 * f + 2 * f + head
    # an executor fusing Conv+Add(+ReLU), accumulating into the shortcut buffer
    fused = analyze_onnx(residual_onnx[True], fuse_add=True)
    assert fused.peak_activation_bytes == 2 * f
    assert fused.bytes_moved == (inp + f) + (f + f) + (2 * f + f) + head


def test_torch_allocations_agree_with_liveness(residual_onnx):
    check = memory_cross_check(Residual(True).eval(), (1, 8, 8), residual_onnx[True])
    assert check["reason"] is None
    # PyTorch's `+` is not in place: at the Add, x, conv2's output and the sum are live
    assert check["measured_peak_bytes"] == check["liveness_peak_bytes_torch_rules"] == 3 * 1024


def test_thin_width16_targets_from_method(tmp_path):
    """docs/method.md section 7: 128 KiB plain vs 192 KiB ResNet per 32x32 image at width 16."""
    from resdist.models import create_model

    peaks = {}
    for name in ("resnet20", "plain20"):
        path = export_onnx(create_model(name, in_chans=3), tmp_path / f"{name}.onnx", (3, 32, 32))
        peaks[name] = analyze_onnx(path).peak_activation_bytes
        assert analyze_onnx(path, batch_size=8).peak_activation_bytes == 8 * peaks[name]
    assert peaks == {"resnet20": 192 * 1024, "plain20": 128 * 1024}


def test_analyze_errors(tmp_path, chain_onnx):
    with pytest.raises(DeployError, match="not found"):
        analyze_onnx(tmp_path / "missing.onnx")
    with pytest.raises(DeployError, match="batch_size"):
        analyze_onnx(chain_onnx, batch_size=0)


def test_profile_models_side_by_side_and_report(tmp_path):
    result = profile_models(
        ["resnet20", "plain20"], input_shape=(1, 16, 16), batch_sizes=(1, 2), threads=(1,),
        runs=2, warmup=1, model_kwargs={"in_chans": 1, "width_mult": 0.5},
    )
    res, plain = result.models
    assert (res.feature_adds, plain.feature_adds) == (9, 0)
    assert res.is_resnet and not plain.is_resnet
    assert "calibrated" in plain.weights and plain.source == "registry"
    assert {r.setting for r in plain.latency} == {(1, 1), (1, 2)}
    assert all(r.runs == 2 and r.p10_ms <= r.median_ms <= r.p90_ms for r in plain.latency)
    (pair,) = result.pairs
    assert (pair.resnet, pair.plain) == ("resnet20", "plain20")
    assert pair.peak_ratio == pytest.approx(1.5)
    assert pair.bytes_moved_ratio > 1.5
    assert len(pair.latency_ratio) == 2
    check = plain.memory_check
    assert check["measured_peak_bytes"] == check["liveness_peak_bytes_torch_rules"]

    table = format_table(result)
    assert "resnet20 / plain20" in table and "1.50x" in table
    md = write_profile_report(result, tmp_path, name="deploy")
    assert "| resnet20" in md
    assert f"- CPU: {result.meta['cpu']} ({result.meta['isa']}" in md  # the ISA it ran with
    for ext in ("json", "png", "md"):
        assert (tmp_path / f"deploy.{ext}").stat().st_size > 0
    saved = json.loads((tmp_path / "deploy.json").read_text())
    assert saved["pairs"][0]["plain"] == "plain20" and saved["models"][1]["source"] == "registry"
    # a saved profile renders again as it was, and is written again unchanged
    assert ProfileResult.from_dict(saved).to_dict() == saved
    assert write_profile_report(saved, tmp_path / "again", name="deploy") == md
    assert json.loads((tmp_path / "again" / "deploy.json").read_text()) == saved
    # one saved before onnx_file was recorded, too
    for m in saved["models"]:
        del m["onnx_file"]
    assert ProfileResult.from_dict(saved).to_dict() == saved
    assert format_table(saved) == table



def test_profile_writes_its_graphs_at_the_opset_asked_for(tmp_path):
    import onnx

    result = profile_models(["resnet8", "plain8"], input_shape=(1, 8, 8), latency=False,
                            memory_check=False, model_kwargs={"in_chans": 1, "width_mult": 0.25},
                            onnx_dir=tmp_path, opset=17)
    assert result.meta["opset"] == 17
    for m in result.models:
        (domain,) = [o for o in onnx.load(tmp_path / m.onnx_file).opset_import if not o.domain]
        assert domain.version == 17
    assert [m.feature_adds for m in result.models] == [3, 0]

def test_merged_profiles_keep_every_model_and_pair(tmp_path):
    kwargs = {"in_chans": 1, "width_mult": 0.25}
    one = profile_models(["resnet20", "plain20"], input_shape=(1, 8, 8), latency=False,
                         memory_check=False, model_kwargs=kwargs, opset=17)  # quicker export
    two = profile_models(["plain20"], input_shape=(1, 12, 12), latency=False,
                         memory_check=False, model_kwargs=kwargs, opset=17)
    merged = merge_profiles([one, two.to_dict()])
    assert [m.input_shape for m in merged.models] == [[1, 8, 8], [1, 8, 8], [1, 12, 12]]
    assert len(merged.pairs) == 1 and len(merged.meta["runs_meta"]) == 2


def test_pairing_by_name_or_last_resnet():
    from resdist.deploy.profile.compare import _pair_models

    def rec(arch, is_resnet):
        return (arch, is_resnet)

    records = [rec("resnet20", True), rec("plain32", False), rec("resnet32", True),
               rec("plain20", False), rec("plain44", False)]
    # plainN <-> resnetN by name; otherwise the last ResNet given before it
    assert _pair_models(records) == [(1, 2), (3, 0), (4, 2)]
    assert _pair_models([rec("plain56", False), rec("mynet", True)]) == [(0, 1)]
    assert _pair_models([rec("plain56", False)]) == []


def test_profile_rejects_unknown_models():
    with pytest.raises(ValueError, match="neither a registered model"):
        profile_models(["resnet57"], latency=False)
    with pytest.raises(ValueError, match="checkpoint not found"):
        profile_models(["missing/plain56.pth"], latency=False)


def flushes() -> bool:
    """Whether the CPU flushes now: a denormal float32 times one is then zero."""
    return (torch.tensor([1e-39], dtype=torch.float32) * 1.0).item() == 0.0


def test_profile_keeps_the_trainers_choice():
    if not set_flush_denormal(False):
        pytest.skip("this CPU cannot flush denormals")
    try:
        set_flush_denormal(True)  # as the trainer does on CPU
        profile_models(["plain20"], input_shape=(1, 8, 8), batch_sizes=(1,), latency=False,
                       memory_check=False, model_kwargs={"in_chans": 1, "width_mult": 0.25})
        assert flushes() and flushing_denormals()
    finally:
        set_flush_denormal(False)


def test_profile_takes_a_state_dict_teacher_as_name_equals_file(tmp_path, capsys):
    """A torchvision/timm teacher that exists only as a state dict is profiled against its plain
    student with ``NAME=FILE``; a file that does not fit is one line."""
    import torchvision

    from resdist.cli import main

    weights = tmp_path / "teacher.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), weights)
    out = tmp_path / "prof"
    code = main(["profile", f"resnet18={weights}", "plain18", "--no-latency", "--out", str(out),
                 "--opset", "17"])  # the TorchScript-based exporter: quicker
    assert code == 0, capsys.readouterr().err
    result = json.loads((out / "profile.json").read_text())
    first = result["models"][0]
    assert first["source"] == f"weights {weights}" and first["weights"] == f"state dict {weights}"
    assert first["feature_adds"] == 8 and result["models"][1]["feature_adds"] == 0
    assert result["pairs"], "the state-dict teacher pairs with its plain student"
    capsys.readouterr()
    assert main(["profile", f"resnet34={weights}", "--no-latency"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do not fit the model" in err[0]
