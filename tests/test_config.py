import pytest

from resdist.config import DATASETS, SCHEDULES, Config, ConfigError, DataConfig
from resdist.data import DATASET_NAMES, DataError


def test_yaml_round_trip(tmp_path):
    cfg = Config().override(["optim.lr=0.05", "data.limit_train=100", "train.amp=bf16",
                             "optim.milestones=[0.3, 0.6]"])
    cfg.to_yaml(tmp_path / "c.yaml")
    back = Config.from_yaml(tmp_path / "c.yaml")
    assert back == cfg and back.optim.milestones == [0.3, 0.6]


@pytest.mark.parametrize("bad,match", [
    ("optim.lrr=1", "optim.lrr"), ("nope.x=1", "nope.x"), ("optim.lr=abc", "optim.lr"),
    ("train.epochs=1.5", "train.epochs"), ("lr", "section.key=value"),
])
def test_bad_overrides_name_the_key(bad, match):
    with pytest.raises(ConfigError, match=match):
        Config().override([bad])


def test_validate_names_bad_values():
    with pytest.raises(ConfigError, match="distill.method"):
        Config().override(["distill.method=magic"]).validate()
    with pytest.raises(ConfigError, match="distill.dc"):
        Config().override(["distill.dc=2"]).validate()


def test_unknown_yaml_key(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="train.epochz"):
        Config.from_yaml(tmp_path / "c.yaml")


@pytest.mark.parametrize("bad,match", [
    ("data.limit_train=0", r"data.limit_train must be >= 1 \(or null\), got 0"),
    ("distill.decay_fraction=0", r"distill.decay_fraction must lie in \(0, 1\], got 0"),
    ("optim.lr=0", "optim.lr must be > 0"),
    ("train.amp=fp8", "unknown precision train.amp='fp8'; choose one of bf16, fp16"),
    ("data.name=mnist", "unknown data set data.name='mnist'"),
])
def test_each_range_is_checked_in_one_place(bad, match):
    with pytest.raises(ConfigError, match=match):
        Config().override([bad]).validate()


def test_data_section_check_raises_the_callers_error():
    # build_data runs the same check with its own error type
    with pytest.raises(DataError, match="data.crop_padding"):
        DataConfig(crop_padding=-1).check(DataError)
    assert DATASET_NAMES is DATASETS and "onecycle" in SCHEDULES
