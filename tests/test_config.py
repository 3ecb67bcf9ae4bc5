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
    ("optim.lr=0", r"optim.lr must lie in \(0, 3.40282e\+38\]"),
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


@pytest.mark.parametrize("bad", [
    "data.batch_size=0", "data.eval_batch_size=0", "data.limit_train=0", "data.limit_test=0",
    "data.crop_padding=-1", "data.image_size=0", "data.num_workers=-1", "data.val_split=-0.1",
    "data.val_split=nan", "data.synthetic_samples=0", "data.synthetic_classes=1",
    "data.synthetic_size=0", "data.synthetic_channels=0", "model.stem=tiny",
    "model.width_mult=0", "model.width_mult=nan", "distill.dc=-0.1",
    "distill.decay_fraction=0", "distill.feature_weight=-1", "distill.feature_weight=inf",
    "distill.kd_alpha=1.5", "distill.kd_temperature=0", "distill.path_loss=mse",
    "optim.lr=0", "optim.lr=nan", "optim.lr=-inf", "optim.momentum=-0.1", "optim.momentum=1",
    "optim.weight_decay=-1", "optim.schedule=linear", "optim.milestones=[0.5,nan]",
    "optim.gamma=0", "optim.step_size=0", "optim.warmup_epochs=-1", "train.epochs=0",
    "train.seed=-1", "train.device=tpu:x", "train.amp=fp8", "train.eval_every=0",
    "model.student_param=repvgg2",
])
def test_validate_rejects_every_out_of_range_value_naming_the_key(bad):
    key = bad.split("=")[0]
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        Config().override([bad]).validate()


def test_validate_rejects_contradictions():
    with pytest.raises(ConfigError, match="optim.nesterov"):
        Config().override(["optim.momentum=0"]).validate()
    with pytest.raises(ConfigError, match="exclude each other"):
        Config().override(["train.resume=true", "train.overwrite=true"]).validate()
    with pytest.raises(ConfigError, match="drop --dirac"):
        Config().override(["model.dirac=true", "model.student_param=repvgg"]).validate()
