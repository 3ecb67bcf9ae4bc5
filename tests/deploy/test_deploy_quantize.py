"""INT8 export (ONNX Runtime static QDQ quantisation) and ONNX evaluation, end to end on tiny
Fashion-MNIST-format files: trained small models, calibration on their training images."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

_DATA_TESTS = str(Path(__file__).resolve().parents[1] / "data")
if _DATA_TESTS not in sys.path:
    sys.path.insert(0, _DATA_TESTS)

from data_writers import write_idx  # noqa: E402

from resdist.cli import main  # noqa: E402
from resdist.config import Config  # noqa: E402
from resdist.deploy import DeployError, count_feature_adds, export  # noqa: E402
from resdist.deploy.onnx_eval import (  # noqa: E402
    evaluate_onnx,
    evaluate_onnx_file,
    model_file_kind,
)
from resdist.deploy.quantize import (  # noqa: E402
    DATA_METADATA_KEY,
    calibration_batches,
    count_qdq,
    gaussian_batches,
    quantize_checkpoint,
    quantize_onnx,
)
from resdist.engine import evaluate, load_checkpoint, model_from_checkpoint  # noqa: E402
from resdist.engine.trainer import train  # noqa: E402

N_TRAIN, N_TEST = 128, 48

# one xdist worker runs this module (`make test` uses --dist loadgroup), so its trained and
# quantised models, module-scoped fixtures, are built once rather than once per worker
pytestmark = pytest.mark.xdist_group("deploy_quantize")


def _images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 images whose class is a bright horizontal band (rows 2c..2c+4) over noise."""
    x = rng.integers(0, 60, (len(labels), 28, 28))
    for i, c in enumerate(labels):
        x[i, 2 * c + 2 : 2 * c + 6] += 180
    return x.astype(np.uint8)


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    train_y = (np.arange(N_TRAIN) % 10).astype(np.uint8)
    test_y = (np.arange(N_TEST)[::-1] % 10).astype(np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", _images(train_y, rng), gz=True)
    write_idx(folder / "train-labels-idx1-ubyte.gz", train_y, gz=True)
    write_idx(folder / "t10k-images-idx3-ubyte.gz", _images(test_y, rng), gz=True)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", test_y, gz=True)
    return folder


def _train(name: str, data_dir: Path, out: Path) -> Path:
    cfg = Config.from_dict({
        "data": {"name": "fashion-mnist", "data_dir": str(data_dir), "batch_size": 32,
                 "eval_batch_size": 16},
        "model": {"name": name, "width_mult": 0.25},
        "optim": {"lr": 0.05, "schedule": "onecycle"},
        "train": {"epochs": 2, "out": str(out), "progress": False, "tensorboard": False},
    }).validate()
    train(cfg)
    return out / "last.pth"


@pytest.fixture(scope="module")
def trained(fmnist, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    return {name: _train(name, fmnist, root / name) for name in ("resnet20", "plain20")}


@pytest.fixture(scope="module")
def quantized(trained, fmnist, tmp_path_factory) -> dict[str, dict]:
    out = tmp_path_factory.mktemp("int8")
    return {
        name: quantize_checkpoint(ckpt, out / f"{name}-int8.onnx", "fashion-mnist",
                                  data_dir=str(fmnist), calibration_images=64).to_dict()
        for name, ckpt in trained.items()
    }


def _fp32_predictions(ckpt: Path, x: np.ndarray) -> np.ndarray:
    import torch

    model = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    with torch.no_grad():
        return model(torch.from_numpy(x)).argmax(1).numpy()


def test_int8_export_loads_agrees_and_keeps_the_shortcut_structure(quantized, trained, fmnist):
    # the test images, preprocessed as in training: never seen by the calibration
    from resdist.config import DataConfig
    from resdist.data import build_data

    bundle = build_data(DataConfig(name="fashion-mnist", data_dir=str(fmnist), batch_size=1,
                                   eval_batch_size=N_TEST), device="cpu")
    x = next(iter(bundle.test))[0].numpy()
    for name, report in quantized.items():
        path = Path(report["path"])
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (logits,) = sess.run(None, {sess.get_inputs()[0].name: x})
        assert logits.shape == (N_TEST, 10) and np.isfinite(logits).all()
        agree = (logits.argmax(1) == _fp32_predictions(trained[name], x)).mean()
        assert agree >= 0.8, (name, agree)
        assert report["calibration_agreement"] >= 0.8
        # a statically quantised QDQ graph: INT8 weights and activation Q/DQ pairs
        assert report["quantize_nodes"] > 0 and report["activation_qdq_pairs"] > 0
        assert report["weight_dequantize"] > 0 and report["int8_bytes"] < report["fp32_bytes"]
        assert report["calibration_images"] == 64
        props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
        assert props[DATA_METADATA_KEY] == "fashion-mnist"
    # shortcut Adds (between DequantizeLinear outputs) counted in the INT8 graph
    assert quantized["plain20"]["feature_adds"] == 0
    assert quantized["resnet20"]["feature_adds"] == 9 == quantized["resnet20"]["fp32_feature_adds"]


def test_adds_between_dequantized_feature_maps_are_counted(quantized):
    g = onnx.load(quantized["resnet20"]["path"]).graph
    dq_out = {o for n in g.node if n.op_type == "DequantizeLinear" for o in n.output}
    adds = [n for n in g.node if n.op_type == "Add" and all(i in dq_out for i in n.input)]
    assert len(adds) == 9  # the ORT quantiser puts Q/DQ on both inputs of each shortcut Add
    assert count_feature_adds(quantized["resnet20"]["path"]) == 9
    assert count_feature_adds(quantized["plain20"]["path"]) == 0


def test_count_qdq_pairs():
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.INT8, [1], [3])
    s = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    z = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w", "s", "z"], ["wd"]),
        helper.make_node("Mul", ["xd", "wd"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])], initializer=[w, s, z],
    )
    counts = count_qdq(helper.make_model(graph))
    assert counts == {"quantize_nodes": 1, "dequantize_nodes": 2, "activation_qdq_pairs": 1,
                      "weight_dequantize": 1}


def test_calibration_batches_use_training_images_without_augmentation(fmnist):
    from resdist.config import DataConfig

    cfg = DataConfig(name="fashion-mnist", data_dir=str(fmnist))
    a = calibration_batches(cfg, num_images=40, batch_size=16, seed=1)
    b = calibration_batches(cfg, num_images=40, batch_size=16, seed=1)
    assert [len(x) for x in a] == [16, 16, 8] and a[0].shape[1:] == (1, 28, 28)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))  # no random crop/flip
    more = calibration_batches(cfg, num_images=10_000)
    assert sum(len(x) for x in more) == N_TRAIN  # capped at the training split


def test_quantize_onnx_accepts_arrays_and_reports_sizes(trained, tmp_path):
    fp32 = tmp_path / "plain.onnx"
    export(trained["plain20"], "onnx", fp32)
    report = quantize_onnx(fp32, tmp_path / "plain-int8.onnx", gaussian_batches((1, 28, 28), 32))
    assert report.calibration_images == 32 and report.feature_adds == 0
    assert report.size_ratio > 1 and report.settings["per_channel"] is True
    with pytest.raises(DeployError, match="no images"):
        quantize_onnx(fp32, tmp_path / "none.onnx", [])


def test_eval_of_fp32_onnx_equals_eval_of_its_checkpoint(trained, fmnist, tmp_path, capsys):
    ckpt = trained["plain20"]
    path = tmp_path / "plain20.onnx"
    export(ckpt, "onnx", path)
    # library: same loader, same figures
    from resdist.config import DataConfig
    from resdist.data import build_data

    bundle = build_data(DataConfig(name="fashion-mnist", data_dir=str(fmnist), batch_size=1,
                                   eval_batch_size=16), device="cpu")
    ref = evaluate(model_from_checkpoint(load_checkpoint(ckpt)), bundle.test)
    got = evaluate_onnx(path, bundle.test)
    assert got["samples"] == ref["samples"] == N_TEST
    assert got["top1"] == ref["top1"] and got["top5"] == ref["top5"]
    assert got["loss"] == pytest.approx(ref["loss"], rel=1e-4)
    # command line: the same top-1 / top-5 line for the checkpoint and its ONNX file
    assert main(["eval", "--checkpoint", str(ckpt), "--data-dir", str(fmnist)]) == 0
    from_ckpt = capsys.readouterr().out
    assert main(["eval", "--checkpoint", str(path), "--data", "fashion-mnist",
                 "--data-dir", str(fmnist)]) == 0
    from_onnx = capsys.readouterr().out
    assert "ONNX fp32" in from_onnx
    assert from_onnx.split(": ", 1)[1].split("loss")[0] == from_ckpt.split(": ", 1)[1].split(
        "loss")[0]


def test_eval_of_int8_onnx_reads_the_data_set_from_metadata(quantized, fmnist, capsys):
    path = quantized["plain20"]["path"]
    assert main(["eval", "--checkpoint", path, "--data-dir", str(fmnist)]) == 0
    out = capsys.readouterr().out
    assert "ONNX int8" in out and f"fashion-mnist test ({N_TEST} images)" in out
    m = evaluate_onnx_file(path, data_dir=str(fmnist), limit_test=10)
    assert m["precision"] == "int8" and m["data"] == "fashion-mnist" and m["samples"] == 10


def test_int8_file_carries_the_contract_and_predicts_and_evaluates(trained, fmnist, tmp_path,
                                                                   capsys):
    """checkpoint -> INT8 without --calibration-data (the run's own data set and folder are
    used) -> the file records the contract -> predict and eval take it as they take the fp32
    file."""
    from PIL import Image

    from resdist.deploy.exporter import read_contract

    ckpt = trained["plain20"]
    out = tmp_path / "q.onnx"
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(out), "--quantize", "int8",
                 "--calibration-images", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["calibration"].startswith("fashion-mnist training split")
    assert read_contract(out) == load_checkpoint(ckpt).contract
    assert report["input_contract"] == read_contract(out).to_dict()
    Image.fromarray(np.zeros((28, 28), dtype=np.uint8)).save(tmp_path / "x.png")
    assert main(["predict", str(out), str(tmp_path / "x.png"), "--json"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert len(top) == 5 and top[0]["class"] in load_checkpoint(ckpt).contract.class_names
    assert main(["eval", "--checkpoint", str(out), "--data-dir", str(fmnist)]) == 0
    assert "ONNX int8" in capsys.readouterr().out


def test_export_quantize_command(trained, fmnist, tmp_path, capsys):
    out = tmp_path / "q.onnx"
    assert main(["export", "--checkpoint", str(trained["resnet20"]), "--format", "onnx",
                 "--out", str(out), "--quantize", "int8", "--calibration-data", "fashion-mnist",
                 "--data-dir", str(fmnist), "--calibration-images", "32"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.is_file() and report["feature_adds"] == 9 and report["calibration_images"] == 32



def _weight_codes(path: Path) -> np.ndarray:
    """Every INT8 weight code of an ONNX QDQ model (the int8 initialisers)."""
    from onnx import numpy_helper

    codes = [numpy_helper.to_array(t).ravel() for t in onnx.load(path).graph.initializer
             if t.data_type == onnx.TensorProto.INT8]
    return np.concatenate(codes)


def test_reduce_range_writes_7_bit_weights_and_the_note_suggests_it_where_int8_saturates(
        trained, fmnist, tmp_path, capsys, monkeypatch):
    """--reduce-range reaches ONNX Runtime's quantiser (weights in 7 bits); on an x86 CPU
    without VNNI a low INT8/fp32 agreement brings a one-line note that suggests it."""
    from resdist import machine
    from resdist.deploy.quantize import checkpoint as qc

    args = ["export", "--checkpoint", str(trained["resnet20"]), "--format", "onnx",
            "--quantize", "int8", "--calibration-data", "fashion-mnist", "--data-dir",
            str(fmnist), "--calibration-images", "32"]
    monkeypatch.setattr(machine, "x86_without_vnni", lambda: True)
    monkeypatch.setattr(qc, "LOW_AGREEMENT", 1.01)  # every agreement counts as low here
    assert main([*args, "--out", str(tmp_path / "q8.onnx")]) == 0
    cap = capsys.readouterr()
    report = json.loads(cap.out)
    assert report["settings"]["reduce_range"] is False and len(report["notes"]) == 1
    note = [ln for ln in cap.err.splitlines() if "note:" in ln]
    assert len(note) == 1 and "this CPU has no VNNI" in note[0] and "--reduce-range" in note[0]
    assert np.abs(_weight_codes(tmp_path / "q8.onnx")).max() > 64

    assert main([*args, "--out", str(tmp_path / "q7.onnx"), "--reduce-range"]) == 0
    cap = capsys.readouterr()
    report = json.loads(cap.out)
    assert report["settings"]["reduce_range"] is True and report["notes"] == []
    assert "note:" not in cap.err
    assert np.abs(_weight_codes(tmp_path / "q7.onnx")).max() <= 64
    monkeypatch.setattr(machine, "x86_without_vnni", lambda: False)  # a VNNI CPU: no note
    assert qc.saturation_note(0.5, reduce_range=False) is None


@pytest.mark.parametrize(("flags", "expected"), [
    ({"sse2", "avx2", "fma"}, True),  # AVX2 only: u8s8 through 16-bit sums
    ({"avx2", "avx512f", "avx512_vnni"}, False),
    ({"avx2", "avx_vnni"}, False),
    (set(), False),  # flags not known (not Linux, not x86): no advice
])
def test_x86_without_vnni_reads_the_cpu_flags(flags, expected, monkeypatch):
    from resdist import machine

    monkeypatch.setattr(machine, "cpu_flags", lambda: flags)
    assert machine.x86_without_vnni() is expected
    import torch

    # benchmarks and profile reports record it beside the ISA torch computes with
    env = machine.environment()
    assert env["isa"] == torch.backends.cpu.get_cpu_capability()
    assert env.get("vnni") is (None if not flags else not expected)

def _one_line_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith(f"resdist {argv[0]}: error: ")
    return err


def test_user_errors_are_one_line(trained, fmnist, tmp_path, capsys):
    ckpt = str(trained["plain20"])
    base = ["export", "--checkpoint", ckpt, "--out", str(tmp_path / "x.onnx")]
    err = _one_line_error(base + ["--quantize", "int8", "--calibration-data", "mnist-digits"],
                          capsys)
    assert "unknown data set --calibration-data='mnist-digits'" in err
    err = _one_line_error(base + ["--format", "torchscript", "--quantize", "int8",
                                  "--calibration-data", "fashion-mnist"], capsys)
    assert "TorchScript export stays fp32" in err
    err = _one_line_error(base + ["--calibration-data", "fashion-mnist"], capsys)
    assert "only used with --quantize" in err
    err = _one_line_error(base + ["--reduce-range"], capsys)
    assert "--reduce-range is only used with --quantize" in err
    err = _one_line_error(base + ["--format", "openvino", "--out", str(tmp_path / "x.xml"),
                                  "--quantize", "int8", "--reduce-range"], capsys)
    assert "--reduce-range is ONNX Runtime's option" in err
    assert not (tmp_path / "x.onnx").exists()
    err = _one_line_error(["profile", "plain20", "--int8", "--no-latency"], capsys)
    assert "drop --no-latency" in err
    # a file that is neither a checkpoint nor ONNX
    junk = tmp_path / "model.onnx"
    junk.write_text("not a model at all\n")
    err = _one_line_error(["eval", "--checkpoint", str(junk), "--data-dir", str(fmnist)], capsys)
    assert "not an ONNX model, or truncated" in err
    with pytest.raises(DeployError):
        model_file_kind(junk)
    err = _one_line_error(["eval", "--checkpoint", str(tmp_path / "missing.onnx")], capsys)
    assert "ONNX file not found" in err
    # an fp32 export names its data set in its contract; a graph without metadata does not,
    # and eval asks for --data
    plain = tmp_path / "plain.onnx"
    export(ckpt, "onnx", plain)
    assert main(["eval", "--checkpoint", str(plain), "--data-dir", str(fmnist)]) == 0
    assert "fashion-mnist" in capsys.readouterr().out
    bare = onnx.load(plain)
    del bare.metadata_props[:]
    onnx.save(bare, tmp_path / "bare.onnx")
    err = _one_line_error(["eval", "--checkpoint", str(tmp_path / "bare.onnx"), "--data-dir",
                           str(fmnist)], capsys)
    assert "--data" in err
    # a model for 28x28x1 images on a data set of 32x32x3 images (synthetic data takes the
    # contract's shape unless told otherwise)
    err = _one_line_error(["eval", "--checkpoint", str(plain), "--data", "synthetic", "--set",
                           "data.synthetic_size=32", "--set", "data.synthetic_channels=3"],
                          capsys)
    assert "1x28x28 inputs but synthetic images are 3x32x32" in err


def test_profile_int8_times_both_precisions_and_pairs_them(tmp_path):
    from resdist.deploy import calibrate_bn, profile_models
    from resdist.deploy.profile import ProfileResult, add_int8_latency, format_int8_table
    from resdist.models import create_model

    models = [(name, calibrate_bn(create_model(name, num_classes=10, in_chans=1,
                                               width_mult=0.25), 1, (1, 16, 16), 8))
              for name in ("resnet20", "plain20")]
    result = profile_models(models, input_shape=(1, 16, 16), batch_sizes=(1, 2), threads=(1,),
                            runs=2, latency=False, memory_check=False, onnx_dir=tmp_path,
                            opset=17)  # the TorchScript-based exporter: quicker
    add_int8_latency(result, tmp_path, calibration_images=8)
    res, plain = result.models
    assert (res.int8.quantization.feature_adds, plain.int8.quantization.feature_adds) == (9, 0)
    for m in (res, plain):
        assert {r.setting for r in m.latency} == {(1, 1), (1, 2)}
        assert {r.setting for r in m.int8.latency} == {(1, 1), (1, 2)}
        report = m.int8.quantization
        assert report.calibration_images == 8 and "Gaussian" in report.calibration
        assert len(m.int8.speedup) == 2
    (pair,) = result.pairs
    assert len(pair.latency_ratio) == 2 and len(pair.latency_ratio_int8) == 2
    table = format_int8_table(result)
    assert "resnet20 / plain20" in table and "t=1 b=2" in table
    # the JSON form: the report's figures without file paths, beside latency and speed-up
    saved = json.loads(json.dumps(result.to_dict()))
    int8 = saved["models"][0]["int8"]
    assert "path" not in int8 and int8["feature_adds"] == 9 and len(int8["speedup"]) == 2
    assert len(saved["pairs"][0]["latency_ratio_int8"]) == 2
    assert ProfileResult.from_dict(saved).to_dict() == saved
    assert format_int8_table(ProfileResult.from_dict(saved)) == table
    with pytest.raises(DeployError, match="measured in this process"):
        add_int8_latency(ProfileResult.from_dict(saved), tmp_path)


def test_profile_models_int8_in_one_call_and_its_report(tmp_path):
    """``profile_models(..., int8=True)`` (what ``resdist profile --int8`` calls) quantises and
    times both precisions; the written report adds profile_int8.md."""
    from resdist.deploy import calibrate_bn, profile_models, write_profile_report
    from resdist.deploy.profile import format_int8_table
    from resdist.models import create_model

    net = calibrate_bn(create_model("plain20", num_classes=10, in_chans=1, width_mult=0.25), 1,
                       (1, 16, 16), 8)
    result = profile_models([("plain20", net)], input_shape=(1, 16, 16), batch_sizes=(1,),
                            threads=(1,), runs=2, memory_check=False, int8=True)
    (m,) = result.models
    assert m.int8 is not None and {r.setting for r in m.int8.latency} == {(1, 1)}
    assert {r.setting for r in m.latency} == {(1, 1)} and "int8" in result.meta
    write_profile_report(result, tmp_path / "out")
    assert (tmp_path / "out" / "profile_int8.md").read_text() == format_int8_table(result) + "\n"
    with pytest.raises(DeployError, match="needs latency"):
        profile_models([("plain20", net)], input_shape=(1, 16, 16), latency=False, int8=True)


def test_onnx_runtime_runs_every_conv_of_the_int8_resnet_in_int8(quantized, tmp_path):
    """uint8 activations: the shortcut Adds become QLinearAdd and no Conv falls back to fp32."""
    from collections import Counter

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(quantized["resnet20"]["path"], so, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
    assert ops["Conv"] == 0 and ops["QLinearConv"] == 21  # stem + 2 per block + 2 projections
    assert ops["Add"] == 0 and ops["QLinearAdd"] == 9


def test_imagefolder_model_at_a_small_size_round_trips_through_fp32_and_int8(tmp_path, capsys):
    """checkpoint -> fp32 ONNX -> INT8 ONNX, each predicted and evaluated at the 20x20 size the
    model was trained at (not ImageNet's 224), without telling eval the size."""
    from data_writers import write_imagefolder

    from resdist.deploy.exporter import read_contract

    root = tmp_path / "imgs"
    write_imagefolder(root, num_classes=3, n_train=8, n_val=3, size=30)
    run = tmp_path / "run"
    assert main(["train", "--data", "imagefolder", "--data-dir", str(root), "--model", "plain20",
                 "--epochs", "1", "--batch-size", "4", "--out", str(run), "--no-progress",
                 "--device", "cpu", "--set", "data.image_size=20", "--set",
                 "data.num_workers=0", "--set", "model.width_mult=0.25", "--set",
                 "train.tensorboard=false"]) == 0
    capsys.readouterr()
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m-int8.onnx"
    assert main(["export", "--checkpoint", str(run), "--out", str(fp32)]) == 0
    assert main(["export", "--checkpoint", str(run), "--out", str(int8), "--quantize", "int8",
                 "--calibration-images", "8"]) == 0
    capsys.readouterr()
    want = load_checkpoint(run / "last.pth").contract
    assert want.input_shape == [3, 20, 20] and want.dataset == "imagefolder"
    image = next((root / "val").rglob("*.JPEG"))
    for path in (run / "last.pth", fp32, int8):
        if path != run / "last.pth":
            assert read_contract(path) == want
        assert main(["predict", str(path), str(image), "--json"]) == 0
        top = json.loads(capsys.readouterr().out)[0]["top"]
        assert top[0]["class"] in want.class_names
        assert main(["eval", "--checkpoint", str(path), "--data-dir", str(root)]) == 0
        assert "(9 images)" in capsys.readouterr().out
