"""Every user-facing error derives from ResdistError, and the CLI turns it into one line."""

from __future__ import annotations

import pytest

from resdist.cli import main
from resdist.config import ConfigError
from resdist.data import DataError
from resdist.deploy import DeployError, MissingDependencyError
from resdist.distill import StageMismatchError
from resdist.engine import CheckpointError
from resdist.errors import ResdistError
from resdist.models import UnknownModelError
from resdist.models.pretrained import WeightsError


@pytest.mark.parametrize("cls", [ConfigError, DataError, DeployError, MissingDependencyError,
                                 StageMismatchError, CheckpointError, UnknownModelError,
                                 WeightsError])
def test_user_errors_share_one_base(cls):
    assert issubclass(cls, ResdistError)


def test_cli_prints_one_line_for_a_resdist_error(tmp_path, capsys):
    missing = tmp_path / "nope.pth"
    assert main(["eval", "--checkpoint", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith("resdist eval: error: checkpoint not found")
