"""A runtime that is not installed: every command that needs it says, in one line, which extra
installs it. These tests load no runtime, so they run with the main suite (the runtimes' own
tests run in processes of their own: see the Makefile)."""

from __future__ import annotations

import sys

import pytest

from resdist.cli import main
from resdist.deploy.errors import MissingDependencyError


def test_missing_runtime_is_one_line_naming_the_extra(monkeypatch, tmp_path, capsys):
    """Without the package the command says which extra installs it."""
    for name in ("openvino", "executorch", "ai_edge_litert", "litert_torch"):
        monkeypatch.setitem(sys.modules, name, None)  # `import name` raises ImportError
    from resdist.deploy.errors import require

    monkeypatch.setitem(sys.modules, "tflite_micro", None)
    for module, extra in (("openvino", "openvino"), ("executorch", "executorch"),
                          ("ai_edge_litert", "litert"), ("tflite_micro", "tflm")):
        with pytest.raises(MissingDependencyError, match=rf"resdist\[{extra}\]"):
            require(module)
    pte = tmp_path / "m.pte"
    pte.write_bytes(b"\x00\x00\x00\x00ET12" + b"\x00" * 32)
    assert main(["predict", str(pte), str(tmp_path)]) == 2
    assert "pip install 'resdist[executorch]'" in capsys.readouterr().err


def test_profile_runtime_flag_names_a_missing_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main(["profile", "resnet20", "plain20", "--runtime", "openvino"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'resdist[openvino]'" in err
