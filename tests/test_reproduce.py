import json
import shutil

import pytest

from resdist.cli import main
from resdist.errors import ResdistError
from resdist.experiments import suites
from resdist.experiments.statistics import paired_differences, t_interval
from resdist.machine import fingerprint, fingerprint_name


@pytest.fixture
def tiny_suite(monkeypatch, tiny_run):
    """Both suites run on tiny synthetic settings."""
    monkeypatch.setattr(suites, "suite_settings", lambda name: tiny_run)
    return tiny_run


def _args(tmp_path, *seeds, suite="fashion-mnist"):
    return ["reproduce", suite, "--seeds", *map(str, seeds), "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "res")]


def test_reproduce_suite_runs_every_method_and_reuses_runs(tmp_path, capsys, tiny_suite):
    args = _args(tmp_path, 0, 1)
    assert main(args) == 0
    summary = json.loads((tmp_path / "res" / "accuracy.json").read_text())
    methods = [(r["model"], r["method"]) for r in summary["rows"]]
    assert methods == [("resnet20", "ce"), ("plain20", "ce"), ("plain20", "kd"),
                       ("plain20", "feature-kd"), ("plain20", "jointrd"),
                       ("plain20 (lambda 1e-4, chosen on val)", "jointrd"),
                       ("plain20 (Dirac)", "ce"), ("plain20 (Dirac)", "jointrd")]
    lam = tmp_path / "runs" / "fashion-mnist" / "seed1" / "plain20-jointrd-lambda1e-4"
    assert "feature_weight: 0.0001" in (lam / "config.yaml").read_text()
    for r in summary["rows"]:
        assert r["seeds"] == [0, 1] and len(r["curves"][0]) == 2
    assert (tmp_path / "res" / "accuracy.png").stat().st_size > 0
    assert "mean ± std" in (tmp_path / "res" / "accuracy.md").read_text()
    # the recorded command reruns the same suite, whatever entry point started it
    assert summary["command"] == (
        f"resdist reproduce fashion-mnist --seeds 0 1 --results {tmp_path / 'res'}")
    capsys.readouterr()
    assert main(args) == 0  # second time: every run is reused, nothing retrained
    assert capsys.readouterr().out.count("recorded run reused") == 16
    md = (tmp_path / "res" / "accuracy.md").read_text()
    assert "Paired differences" in md
    assert f"Machine: {fingerprint_name(fingerprint())}." in md
    assert summary["machines"][0]["runs"] == 16 and summary["machines"][0]["torch"]


def test_each_run_is_recorded_as_it_finishes_and_another_machine_finishes_the_suite(
        tmp_path, capsys, monkeypatch, tiny_suite):
    """An invocation killed after the teacher leaves the teacher's record and weights; another
    machine (no run folders) trains only the students, from that very teacher, and the report
    names both machines."""
    from resdist.engine import trainer

    real_train, trained = trainer.train, []

    def train_then_die(cfg):
        if trained:
            raise KeyboardInterrupt
        trained.append(cfg.train.out)
        return real_train(cfg)

    monkeypatch.setattr(trainer, "train", train_then_die)
    assert main(_args(tmp_path, 0, suite="fashion-mnist-long")) == 130  # Ctrl-C
    seed0 = tmp_path / "res" / "runs" / "fashion-mnist-long" / "seed0"
    assert sorted(p.name for p in seed0.iterdir()) == ["resnet20-ce.json", "resnet20-ce.pth"]
    teacher = json.loads((seed0 / "resnet20-ce.json").read_text())
    assert teacher["machine"]["cpu"] == fingerprint()["cpu"]
    assert len(teacher["curve"]) == 2 and teacher["train_time_s"] > 0
    # "another machine": no run folders, another CPU name; the teacher's record says where it ran
    shutil.rmtree(tmp_path / "runs")
    teacher["machine"]["cpu"] = "Other CPU"
    (seed0 / "resnet20-ce.json").write_text(json.dumps(teacher))
    monkeypatch.setattr(trainer, "train", real_train)
    capsys.readouterr()
    assert main(_args(tmp_path, 0, suite="fashion-mnist-long")) == 0
    out = capsys.readouterr().out
    assert out.count("recorded run reused (measured on Other CPU (") == 1
    assert not (tmp_path / "runs" / "fashion-mnist-long" / "seed0" / "resnet20-ce").exists()
    kd = (tmp_path / "runs" / "fashion-mnist-long" / "seed0" / "plain20-kd" / "config.yaml")
    assert str(seed0 / "resnet20-ce.pth") in kd.read_text()  # taught by the kept teacher
    md = (tmp_path / "res" / "accuracy_long.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ")][1:]  # below the header
    assert "(one seed)" in md and not any("±" in line for line in rows)
    other = fingerprint_name({**fingerprint(), "cpu": "Other CPU"})
    assert f"- {other}: 1 run(s)" in md and f"- {fingerprint_name(fingerprint())}: " in md
    summary = json.loads((tmp_path / "res" / "accuracy_long.json").read_text())
    assert [m["runs"] for m in summary["machines"]] == [1, len(suites.LONG_ROWS)]



def test_a_student_learns_from_the_recorded_teacher_not_an_unfinished_run_folder(
        tmp_path, capsys, tiny_suite):
    """The teacher is recorded (by another machine, say) while this machine's folder of the
    same teacher run holds an unfinished run: the student learns from the recorded weights."""
    import yaml

    base = _args(tmp_path, 0, suite="fashion-mnist-long")
    assert main([*base, "--runs", "resnet20-ce"]) == 0
    folder = tmp_path / "runs" / "fashion-mnist-long" / "seed0" / "resnet20-ce"
    (folder / "metrics.jsonl").write_text("")  # as if killed before its first epoch ended
    assert main([*base, "--runs", "plain20-kd"]) == 0
    made = yaml.safe_load((tmp_path / "runs" / "fashion-mnist-long" / "seed0" / "plain20-kd"
                           / "config.yaml").read_text())
    kept = tmp_path / "res" / "runs" / "fashion-mnist-long" / "seed0" / "resnet20-ce.pth"
    assert made["teacher"]["checkpoint"] == str(kept)

def _row(model, method, seeds, values):
    return {"model": model, "method": method, "seeds": seeds, "final_top1": values}


def test_paired_differences_pair_students_of_the_same_seed_with_a_t_interval():
    summary = {"rows": [
        _row("resnet32", "ce", [0, 1, 2], [89.0, 88.0, 90.0]),
        _row("plain32", "ce", [0, 1, 2], [85.0, 84.0, 86.0]),
        _row("plain32", "feature-kd", [0, 1, 2], [87.0, 87.0, 87.0]),
        _row("plain32", "jointrd", [2, 0, 1], [88.0, 86.0, 85.0]),  # seeds in another order
        _row("plain32 (Dirac)", "jointrd", [0, 1, 2], [80.0, 80.0, 80.0]),
    ]}
    by_name = {p["comparison"]: p for p in paired_differences(summary)}
    assert set(by_name) == {"plain32 jointrd - plain CE", "plain32 jointrd - feature KD",
                            "teacher - plain32 jointrd"}
    vs_ce = by_name["plain32 jointrd - plain CE"]
    assert vs_ce["seeds"] == [2, 0, 1] and vs_ce["differences"] == [2.0, 1.0, 1.0]
    # mean 4/3, std 1/sqrt(3); t(0.975, 2 df) = 4.303
    half = 4.303 * (1 / 3**0.5) / 3**0.5
    assert vs_ce["mean"] == pytest.approx(4 / 3)
    assert vs_ce["ci95"] == pytest.approx([4 / 3 - half, 4 / 3 + half], abs=1e-3)
    one = paired_differences({"rows": [r | {"seeds": [0], "final_top1": [1.0]}
                                                 for r in summary["rows"]]})
    assert all(p["ci95"] is None for p in one)


def test_each_other_road_is_compared_with_plain_ce_plain_jointrd_and_the_teacher():
    summary = {"rows": [
        _row("resnet20", "ce", [0, 1], [80.0, 81.0]),
        _row("plain20", "ce", [0, 1], [70.0, 72.0]),
        _row("plain20", "jointrd", [0, 1], [78.0, 79.0]),
        _row("plain20 (RepVGG-style)", "ce", [0, 1], [75.0, 74.0]),
        _row("plain20 (RepVGG-style)", "jointrd", [0, 1], [79.0, 80.0]),
    ]}
    by_name = {p["comparison"]: p["differences"] for p in paired_differences(summary)}
    assert by_name == {
        "plain20 jointrd - plain CE": [8.0, 7.0], "teacher - plain20 jointrd": [2.0, 2.0],
        "plain20 (RepVGG-style) ce - plain CE": [5.0, 2.0],
        "plain20 (RepVGG-style) ce - plain JointRD": [-3.0, -5.0],
        "teacher - plain20 (RepVGG-style) ce": [5.0, 7.0],
        "plain20 (RepVGG-style) jointrd - plain CE": [9.0, 8.0],
        "plain20 (RepVGG-style) jointrd - plain JointRD": [1.0, 1.0],
        "teacher - plain20 (RepVGG-style) jointrd": [1.0, 1.0],
    }


def test_the_t_interval_takes_its_quantile_from_students_t():
    low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, std 1, n 3: t(0.975, 2 df) = 4.303
    assert (high - 2.0) * 3**0.5 == pytest.approx(4.303, abs=5e-4)
    assert low == pytest.approx(4.0 - high)
    assert t_interval([1.0]) is None


def test_a_suite_without_scipy_stops_before_training(tmp_path, monkeypatch, tiny_suite):
    import sys

    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import scipy.stats fails
    with pytest.raises(ResdistError, match="pip install scipy"):
        suites.run_suite("fashion-mnist", (0, 1), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_a_run_trained_on_a_gpu_names_the_gpu(monkeypatch):
    import torch

    on_cpu = fingerprint("cpu")
    assert "gpu" not in on_cpu and on_cpu["cpu"] and on_cpu["cores"] >= 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: f"Test GPU {index}")
    assert fingerprint("auto")["gpu"] == "Test GPU None"
    assert fingerprint("cuda:1")["gpu"] == "Test GPU 1"
    assert "gpu" not in fingerprint("cpu")  # a CPU run on a GPU machine names no GPU
    name = fingerprint_name(fingerprint("cuda"))
    assert name.startswith(f"Test GPU None GPU on {on_cpu['cpu']}")


def test_the_cifar10_suite_runs_the_paper_recipe_on_the_official_layout(tmp_path, capsys):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from data_writers import write_cifar

    cfg = suites.suite_settings("cifar10")
    assert cfg["data"]["name"] == "cifar10" and cfg["optim"]["schedule"] == "onecycle"
    assert cfg["data"]["crop_padding"] == 4 and cfg["data"]["hflip"] and cfg["data"]["augment"]
    assert (cfg["distill"]["dc"], cfg["distill"]["feature_weight"],
            cfg["distill"]["decay_fraction"]) == (0.5, 1e-3, 0.3)  # the released defaults
    write_cifar(tmp_path / "c10", per_batch=8, n_test=6)
    args = ["reproduce", "cifar10", "--seeds", "0", "--data-dir", str(tmp_path / "c10"),
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
            "--set", "model.width_mult=0.25", "--set", "data.batch_size=8",
            "--set", "train.epochs=1", "--set", "train.device=cpu"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "res" / "accuracy_cifar10.json").read_text())
    model = summary["config"]["model"]["name"]
    teacher = model.replace("plain", "resnet")
    road = f"{model} (RepVGG-style)"
    assert [(r["model"], r["method"]) for r in summary["rows"]] == [
        (teacher, "ce"), (model, "ce"), (model, "kd"), (model, "feature-kd"), (model, "jointrd"),
        (road, "ce"), (road, "jointrd")]
    assert summary["config"]["model"]["student_param"] == "plain"
    md = (tmp_path / "res" / "accuracy_cifar10.md").read_text()
    assert md.startswith("CIFAR-10 (JPEG copy): all 50000 training images, full 10k test set")
    records = tmp_path / "res" / "runs" / "cifar10" / "seed0"
    assert (records / f"{teacher}-ce.pth").exists() and (records / f"{model}-jointrd.json").exists()
    made = json.loads((records / f"{model}-jointrd-repvgg.json").read_text())["settings"]
    assert made["model"]["student_param"] == "repvgg" and made["distill"]["method"] == "jointrd"


def test_the_tiny_suite_trains_both_teachers_and_each_student_through_its_own(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from data_writers import write_cifar

    cfg = suites.suite_settings("tiny")
    assert cfg["model"]["name"] == "plain8" and cfg["data"]["name"] == "cifar10"
    write_cifar(tmp_path / "c10", per_batch=8, n_test=6)
    args = ["reproduce", "tiny", "--seeds", "0", "1", "--data-dir", str(tmp_path / "c10"),
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
            "--set", "model.width_mult=0.25", "--set", "data.batch_size=8",
            "--set", "train.epochs=1", "--set", "train.device=cpu"]
    assert main(args) == 0
    summary = json.loads((tmp_path / "res" / "accuracy_tiny.json").read_text())
    assert [(r["model"], r["method"]) for r in summary["rows"]] == [
        ("resnet8", "ce"), ("resnet20", "ce"), ("plain8", "ce"), ("plain8", "jointrd"),
        ("plain20", "jointrd")]
    records = tmp_path / "res" / "runs" / "tiny" / "seed1"
    # every run's weights are kept (small networks), so INT8 can be measured anywhere later
    for run in ("resnet8-ce", "resnet20-ce", "plain8-ce", "plain8-jointrd", "plain20-jointrd"):
        assert (records / f"{run}.pth").exists() and (records / f"{run}.json").exists()
    from resdist.config import Config

    made = Config.from_yaml(tmp_path / "runs" / "tiny" / "seed1" / "plain20-jointrd" / "config.yaml")
    assert made.teacher.checkpoint.endswith("resnet20-ce/last.pth")
    comparisons = {p["comparison"] for p in paired_differences(summary)}
    assert {"plain8 jointrd - plain CE", "teacher - plain8 jointrd", "teacher - plain20 jointrd",
            "plain20 jointrd - resnet8 ce", "plain20 jointrd - plain8 jointrd"} == comparisons
    md = (tmp_path / "res" / "accuracy_tiny.md").read_text()
    assert md.startswith("MLPerf Tiny image classification (CIFAR-10, JPEG copy): all 50000")
    assert "plain20 jointrd - resnet8 ce" in md



def test_runs_splits_a_suite_by_run(tmp_path, capsys):
    """--runs trains only the runs it names; a later invocation (another machine: no run
    folders) trains another run, reusing the recorded one, and the report holds all three,
    listing the rest as missing. (Refusals: test_reproduce_runs in test_faults_issue35.py.)"""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
    from data_writers import write_cifar

    assert suites.suite_runs("tiny") == ["resnet8-ce", "resnet20-ce", "plain8-ce",
                                         "plain8-jointrd", "plain20-jointrd"]
    write_cifar(tmp_path / "c10", per_batch=8, n_test=6)
    base = ["reproduce", "tiny", "--seeds", "0", "--data-dir", str(tmp_path / "c10"),
            "--out", str(tmp_path / "runs"), "--results", str(tmp_path / "res"),
            "--set", "model.width_mult=0.25", "--set", "data.batch_size=8",
            "--set", "train.epochs=1", "--set", "train.device=cpu"]
    records = tmp_path / "res" / "runs" / "tiny" / "seed0"
    assert main([*base, "--runs", "resnet8-ce", "plain8-jointrd"]) == 0
    assert sorted(p.name for p in records.iterdir()) == [
        "plain8-jointrd.json", "plain8-jointrd.pth", "resnet8-ce.json", "resnet8-ce.pth"]
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny" / "seed0").iterdir()) == [
        "plain8-jointrd", "resnet8-ce"]
    shutil.rmtree(tmp_path / "runs")  # another machine: only the records travel
    capsys.readouterr()
    assert main([*base, "--runs", "plain8-ce", "plain8-jointrd"]) == 0
    out = capsys.readouterr().out
    assert out.count("recorded run reused") == 1 and "== seed 0: plain8 ce ==" in out
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny" / "seed0").iterdir()) == [
        "plain8-ce"]
    summary = json.loads((tmp_path / "res" / "accuracy_tiny.json").read_text())
    assert [(r["model"], r["method"]) for r in summary["rows"]] == [
        ("resnet8", "ce"), ("plain8", "ce"), ("plain8", "jointrd")]
    assert summary["missing"] == ["seed 0 resnet20 ce", "seed 0 plain20 jointrd"]

def test_each_jointrd_row_is_compared_with_its_own_teacher():
    summary = {"rows": [
        _row("resnet8", "ce", [0, 1], [85.0, 86.0]),
        _row("resnet20", "ce", [0, 1], [90.0, 91.0]),
        _row("plain8", "jointrd", [0, 1], [84.0, 84.0]),
        _row("plain20", "jointrd", [0, 1], [88.0, 90.0]),
    ], "compare": [["plain20 jointrd", "resnet8 ce"], ["plain20 jointrd", "plain8 ce"]]}
    by_name = {p["comparison"]: p["differences"] for p in paired_differences(summary)}
    assert by_name == {"teacher - plain8 jointrd": [1.0, 2.0],
                       "teacher - plain20 jointrd": [2.0, 1.0],
                       "plain20 jointrd - resnet8 ce": [3.0, 4.0]}  # no plain8 ce row: left out


def test_a_record_written_before_a_config_key_existed_is_reused_at_that_keys_default(tmp_path):
    """A key added later (here data.crop_pct) reads as its default in an older record: the
    record is reused while the planned run keeps the default, and refused once it does not."""
    from resdist.config import Config
    from resdist.experiments.records import RecordError, RunStore

    store = RunStore(tmp_path, "suite")
    planned = Config().to_dict()
    machine = {"cpu": "test cpu", "cores": 2, "torch": "2.0"}  # what a report names
    fields = {"final_top1": 50.0, "best_top1": 50.0, "curve": [50.0], "train_time_s": 1.0,
              "history": []}
    store.save(0, "run", planned, fields, machine)
    path = store.record_path(0, "run")
    record = json.loads(path.read_text())
    del record["settings"]["data"]["crop_pct"]  # as written before the key existed
    path.write_text(json.dumps(record))
    assert store.load(0, "run", planned)["final_top1"] == 50.0
    changed = Config().to_dict()
    changed["data"]["crop_pct"] = 1.0
    with pytest.raises(RecordError, match=r"differs in: data\.crop_pct"):
        store.load(0, "run", changed)


def test_report_only_makes_the_report_from_the_records_and_lists_the_missing_runs(tmp_path,
                                                                                 capsys):
    from pathlib import Path

    from resdist.config import Config
    from resdist.experiments.records import RecordError, RunStore

    base = Config.from_dict(suites.suite_settings("cifar10")).validate()
    store = RunStore(tmp_path / "res", "cifar10")
    fields = {"final_top1": 70.0, "best_top1": 70.0, "curve": [70.0], "train_time_s": 1.0,
              "history": [{"epoch": 4, "test_top1": 70.0, "epoch_time_s": 1.0}]}
    plan = [("resnet20", suites.Row("ce"), 0), ("plain20", suites.Row("ce"), 0),
            ("resnet20", suites.Row("ce"), 1), ("plain20", suites.CIFAR10_ROWS[-1], 0)]
    for model, row, seed in plan:
        cfg = suites.run_config(base, model, row, "resnet20", Path("unused"))
        cfg.train.seed = seed
        store.save(seed, suites.run_name(model, row), cfg.to_dict(),
                   {**fields, "final_top1": 70.0 + seed, "best_top1": 70.0 + seed,
                    "curve": [70.0 + seed]}, fingerprint("cpu"))
    assert main(["reproduce", "cifar10", "--seeds", "0", "1", "--results", str(tmp_path / "res"),
                 "--out", str(tmp_path / "runs"), "--report-only"]) == 0
    assert not (tmp_path / "runs").exists()  # nothing trained
    summary = json.loads((tmp_path / "res" / "accuracy_cifar10.json").read_text())
    assert [(r["model"], r["method"], r["seeds"]) for r in summary["rows"]] == [
        ("resnet20", "ce", [0, 1]), ("plain20", "ce", [0]),
        ("plain20 (RepVGG-style)", "jointrd", [0])]
    assert "seed 1 plain20 ce" in summary["missing"] and len(summary["missing"]) == 10
    assert "Not yet recorded" in (tmp_path / "res" / "accuracy_cifar10.md").read_text()
    with pytest.raises(RecordError, match="no run of suite cifar10"):
        suites.run_suite("cifar10", (2,), tmp_path / "runs", results_dir=tmp_path / "res",
                         report_only=True)


def test_a_full_disk_while_writing_the_report_keeps_the_previous_report_whole(
        tmp_path, monkeypatch, tiny_suite):
    import errno

    from matplotlib.figure import Figure

    args = _args(tmp_path, 0)
    assert main(args) == 0
    res = tmp_path / "res"
    before = {p.name: p.read_bytes() for p in res.iterdir() if p.is_file()}
    assert {"accuracy.json", "accuracy.md", "accuracy.png"} <= set(before)

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    summary = json.loads((res / "accuracy.json").read_text())
    summary["command"] = "changed"
    with pytest.raises(OSError):
        suites.write_report(summary, res)
    assert {p.name: p.read_bytes() for p in res.iterdir() if p.is_file()} == before


def test_the_report_keeps_a_path_python_could_not_decode_as_its_bytes(tmp_path, tiny_suite):
    assert main(_args(tmp_path, 0)) == 0
    res = tmp_path / "res"
    summary = json.loads((res / "accuracy.json").read_text())
    summary["command"] = "resdist reproduce fashion-mnist --results /data/\udcff"
    suites.write_report(summary, res)
    assert b"/data/\xff" in (res / "accuracy.md").read_bytes()
