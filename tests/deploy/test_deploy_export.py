"""ONNX/TorchScript export: round trips, dynamic batch, and no Adds left in plain students."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper  # noqa: E402

from resdist.data.contract import contract_for_data  # noqa: E402
from resdist.deploy import (  # noqa: E402
    DeployError,
    count_feature_adds,
    count_torchscript_feature_adds,
    export,
    export_onnx,
    export_torchscript,
    verify_onnx,
)
from resdist.engine.checkpoint import Checkpoint  # noqa: E402
from resdist.errors import ResdistError  # noqa: E402
from resdist.models import Bottleneck, ResNet, create_model  # noqa: E402

SMALL = {"num_classes": 10, "in_chans": 1, "width_mult": 0.5}
SHAPE = (1, 16, 16)


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=gen) * 2 - 1)
                m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                m.bias.copy_(torch.rand(n, generator=gen) - 0.5)
    return model.eval()


def test_onnx_round_trip_with_dynamic_batch(tmp_path):
    model = randomize(create_model("resnet20", **SMALL))
    path = export_onnx(model, tmp_path / "m.onnx", SHAPE)
    proto = onnx.load(path)
    onnx.checker.check_model(proto)
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["logits"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    assert verify_onnx(path, model, batch_sizes=(1, 5)) < 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(7, *SHAPE)
    (out,) = sess.run(None, {"images": x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("name", "kwargs", "expected"),
    [
        ("plain20", {}, 0),
        ("plain20", {"dirac": True}, 0),
        ("plain20", {"repvgg": True}, 0),  # the branches' sums fold into the convs
        ("plain20", {"keep_downsample_shortcuts": True}, 2),  # stages 2..3
        ("resnet20", {}, 9),  # one per block
    ],
)
def test_feature_adds_in_exported_graph(tmp_path, name, kwargs, expected):
    model = randomize(create_model(name, **SMALL, **kwargs))
    assert model.count_shortcut_adds() == expected
    path = export_onnx(model, tmp_path / "m.onnx", SHAPE)
    assert count_feature_adds(path) == expected


def test_bottleneck_resnet_has_one_add_per_block(tmp_path):
    model = randomize(ResNet(Bottleneck, [2, 1], (4, 8), num_classes=3, in_chans=1))
    path = export_onnx(model, tmp_path / "b.onnx", (1, 32, 32))
    assert count_feature_adds(path) == 3 == model.count_shortcut_adds()
    assert verify_onnx(path, model) < 1e-4


def test_legacy_exporter_gives_the_same_graph_structure(tmp_path):
    model = randomize(create_model("plain20", **SMALL, keep_downsample_shortcuts=True))
    path = export_onnx(model, tmp_path / "l.onnx", SHAPE, exporter="torchscript", opset=17)
    assert count_feature_adds(path) == 2
    assert verify_onnx(path, model, batch_sizes=(1, 4)) < 1e-4


def test_count_feature_adds_ignores_constants_and_vectors():
    def vi(name, shape):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    bias = helper.make_tensor("bias", TensorProto.FLOAT, [1, 2, 1, 1], [0.5, -0.5])
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["a"]),  # feature + constant: not counted
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Add", ["a", "r"], ["s"]),  # feature + feature: counted
        helper.make_node("Sum", ["s", "x", "a"], ["t"]),  # Sum of features: counted
        helper.make_node("ReduceMean", ["t"], ["m"], axes=[2, 3], keepdims=0),
        helper.make_node("Add", ["m", "m"], ["y"]),  # 2-D activations: not feature maps
    ]
    graph = helper.make_graph(nodes, "g", [vi("x", [1, 2, 4, 4])], [vi("y", [1, 2])], [bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    assert count_feature_adds(model) == 2


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.load is deprecated upstream
def test_torchscript_round_trip(tmp_path):
    for name, adds in (("resnet20", 9), ("plain20", 0)):
        model = randomize(create_model(name, **SMALL))
        path = export_torchscript(model, tmp_path / f"{name}.pt", SHAPE)
        loaded = torch.jit.load(str(path))
        for b in (1, 4):
            x = torch.randn(b, *SHAPE)
            with torch.no_grad():
                assert torch.allclose(loaded(x), model(x), rtol=1e-4, atol=1e-5)
        assert count_torchscript_feature_adds(loaded) == adds
        assert count_torchscript_feature_adds(path, trusted=True) == adds
        with pytest.raises(ResdistError, match="runs the code it carries"):
            count_torchscript_feature_adds(path)  # a path is code: refused unless trusted


def _checkpoint(tmp_path, name="plain20", **kwargs):
    model = randomize(create_model(name, **SMALL, **kwargs))
    path = tmp_path / "ckpt.pth"
    contract = contract_for_data("synthetic", in_chans=SHAPE[0], image_size=SHAPE[1],
                                 num_classes=SMALL["num_classes"])
    Checkpoint(name, {**SMALL, **kwargs}, model.state_dict(), contract=contract).save(path)
    return path, model


def test_export_from_checkpoint_reports(tmp_path):
    path, model = _checkpoint(tmp_path, dirac=True)
    report = export(path, "onnx", tmp_path / "out" / "m.onnx")
    assert report.format == "onnx" and report.model == "plain20"
    assert report.feature_adds == 0 == report.expected_shortcut_adds
    assert report.max_rel_error < 1e-4
    assert report.input_shape == list(SHAPE)
    assert (tmp_path / "out" / "m.onnx").is_file()
    # Dirac parameters are folded away: fewer parameters than the training form
    assert report.parameters < sum(p.numel() for p in model.parameters())
    ts = export(path, "torchscript", tmp_path / "m.pt")
    assert ts.feature_adds == 0 and ts.max_rel_error < 1e-4


def test_repvgg_student_exports_as_the_plain_graph(tmp_path):
    path, model = _checkpoint(tmp_path, repvgg=True)
    report = export(path, "onnx", tmp_path / "r.onnx")
    assert report.feature_adds == 0 == report.expected_shortcut_adds
    assert report.max_rel_error < 1e-4
    plain = export(randomize(create_model("plain20", **SMALL)), "onnx", tmp_path / "p.onnx",
                   SHAPE)
    assert report.parameters < sum(p.numel() for p in model.parameters())

    def ops(p):
        return [n.op_type for n in onnx.load(p).graph.node]

    # the same operators in the same order as the plain student's (convs with biases, ReLUs)
    assert ops(tmp_path / "r.onnx") == ops(tmp_path / "p.onnx")
    assert report.parameters == plain.parameters


def test_export_errors(tmp_path):
    model = create_model("plain20", **SMALL)
    with pytest.raises(DeployError, match="format"):
        export(model, "coreml", tmp_path / "m", SHAPE)
    with pytest.raises(DeployError, match="input_shape"):
        export(model, "onnx", tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="checkpoint not found"):
        export(tmp_path / "missing.pth", "onnx", tmp_path / "m.onnx")
    with pytest.raises(DeployError, match="input_shape"):
        export_onnx(model, tmp_path / "m.onnx", (16, 16))


def test_export_of_weights_without_data_is_one_clear_error(tmp_path):
    from resdist.deploy import DeployError, export
    from resdist.models import create_model

    model = create_model("plain20", num_classes=4, in_chans=1, width_mult=0.25).to("meta")
    with pytest.raises(DeployError, match="meta device"):
        export(model, "onnx", tmp_path / "m.onnx", input_shape=(1, 8, 8))


def _edit_checkpoint(src, dst, key, change):
    """A copy of a resdist checkpoint with one model tensor changed, as a damaged or hostile
    file would hold it (written past resdist's own checks)."""
    raw = torch.load(src, weights_only=True)
    state = next(v for v in raw.values() if isinstance(v, dict) and key in v)
    state[key] = change(state[key])
    torch.save(raw, dst)


def test_a_checkpoint_whose_model_outputs_nan_is_refused_before_anything_is_written(tmp_path):
    # finite weights, but a negative BatchNorm variance: every output is NaN
    path, model = _checkpoint(tmp_path)
    key = next(k for k in model.state_dict() if k.endswith("running_var"))
    _edit_checkpoint(path, tmp_path / "neg.pth", key, lambda t: -t.abs() - 1)
    with pytest.raises(ResdistError, match="negative variances"):
        export(tmp_path / "neg.pth", "onnx", tmp_path / "neg.onnx")
    # the same model handed over directly (no checkpoint check): its outputs are checked
    state = model.state_dict()
    state[key] = -state[key].abs() - 1
    model.load_state_dict(state)
    with pytest.raises(DeployError, match="NaN or infinite values on a random input"):
        export(model, "onnx", tmp_path / "neg.onnx", SHAPE)
    assert not (tmp_path / "neg.onnx").exists()


@pytest.mark.parametrize("how", ["sparse", "meta"])
def test_a_checkpoint_with_weights_that_hold_no_dense_data_is_refused(tmp_path, how):
    from resdist.engine import load_checkpoint

    path, model = _checkpoint(tmp_path)
    key = next(k for k in model.state_dict() if k.endswith("weight"))
    _edit_checkpoint(path, tmp_path / "odd.pth", key,
                     lambda t: t.to_sparse() if how == "sparse" else t.to("meta"))
    with pytest.raises(ResdistError, match=f"{key} is not a dense tensor with data"):
        load_checkpoint(tmp_path / "odd.pth")


def test_verification_does_not_let_a_nan_output_by(tmp_path):
    from resdist.deploy.formats.common import verify_runner

    model = randomize(create_model("plain20", **SMALL))

    def nan_runner(batch):
        return np.full((len(batch), SMALL["num_classes"]), np.nan, np.float32)

    with pytest.raises(DeployError, match="outputs NaN or infinite values"):
        verify_runner(nan_runner, model, SHAPE, "float32")


def test_safetensors_export_on_a_full_disk_is_one_line_and_keeps_the_previous_file(
        tmp_path, monkeypatch):
    import errno
    import pathlib
    import stat

    pytest.importorskip("safetensors")
    path, _ = _checkpoint(tmp_path)
    out = tmp_path / "m.safetensors"
    export(path, "safetensors", out)
    (tmp_path / "plain.txt").write_text("x")  # written with open(): the permissions to match
    assert stat.S_IMODE(out.stat().st_mode) == stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    before = out.read_bytes()

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(DeployError, match="no space left on the device; the previous file is kept"):
        export(path, "safetensors", out)
    monkeypatch.undo()
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "m.safetensors", "plain.txt"]
