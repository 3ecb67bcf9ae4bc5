import json

from resdist import reproduce
from resdist.cli import main


def test_reproduce_suite_runs_every_method_and_reuses_runs(tmp_path, monkeypatch, capsys, tiny_run):
    monkeypatch.setitem(reproduce.SUITES, "fashion-mnist", tiny_run)
    args = ["reproduce", "fashion-mnist", "--seeds", "0", "1", "--out", str(tmp_path / "runs"),
            "--results", str(tmp_path / "res")]
    assert main(args) == 0
    summary = json.loads((tmp_path / "res" / "accuracy.json").read_text())
    methods = [(r["model"], r["method"]) for r in summary["rows"]]
    assert methods == [("resnet20", "ce"), ("plain20", "ce"), ("plain20", "kd"),
                       ("plain20", "feature-kd"), ("plain20", "jointrd"),
                       ("plain20 (lambda 1e-4, chosen on val)", "jointrd"),
                       ("plain20 (Dirac)", "ce"), ("plain20 (Dirac)", "jointrd")]
    lam = tmp_path / "runs" / "seed1" / "plain20-jointrd-lambda1e-4" / "config.yaml"
    assert "feature_weight: 0.0001" in lam.read_text()
    for r in summary["rows"]:
        assert r["seeds"] == [0, 1] and len(r["curves"][0]) == 2
    assert (tmp_path / "res" / "accuracy.png").stat().st_size > 0
    assert "mean ± std" in (tmp_path / "res" / "accuracy.md").read_text()
    # the recorded command reruns the same suite, whatever entry point started it
    assert summary["command"] == (
        f"resdist reproduce fashion-mnist --seeds 0 1 --results {tmp_path / 'res'}")
    capsys.readouterr()
    assert main(args) == 0  # second time: every run is reused, nothing retrained
    assert capsys.readouterr().out.count("finished run reused") == 16
