"""Every packaged YAML preset (``resdist.presets``, found by glob, so new presets are covered too):
it loads by name, validates, names registered models, keeps the paper's recipe values
(docs/method.md sections 3 and 5), and trains for a couple of steps on tiny data written in its
data set's real on-disk format.

The training runs change only what a CPU smoke test must: data size and batch, one epoch, the
CPU, no progress bar or TensorBoard, and the teacher's source (a randomly initialised teacher
saved as a state-dict file stands in for the trained checkpoint or the torchvision weights). Each
run happens in a fresh working directory that holds the data at the preset's own (relative)
``data.data_dir``, so the preset's data folder, output folder, model, stem, Dirac and shortcut
options, objective, schedule and precision are exercised as written.

ImageNet presets read an ImageFolder tree of ``IMAGEFOLDER_CLASSES`` class folders of tiny JPEGs
at ``data.image_size=32``: 1000 folders would be slow to write and read, and the classifier's
width comes from the data (the number of class folders), not from the preset.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from data_writers import write_cifar, write_fmnist, write_imagefolder

import resdist.presets
from resdist.config import Config, ConfigError
from resdist.engine.build import TEACHER_METHODS
from resdist.engine.trainer import RunResult, train
from resdist.experiments.suites import SUITES, suite_settings
from resdist.models import create_model, is_model, teacher_name_for
from resdist.presets import list_presets, load_preset, preset_description

CONFIGS = Path(resdist.presets.__file__).resolve().parent
PRESETS = sorted([*CONFIGS.rglob("*.yaml"), *CONFIGS.rglob("*.yml")])
IMAGEFOLDER_CLASSES = 4
DEPTHS = (18, 34, 50)

#: presets whose smoke run takes over ~20 s on one CPU thread (they still run in CI)
SLOW: set[str] = set()


def _rel(path: Path) -> str:
    return path.relative_to(CONFIGS).as_posix()


def _params(paths: list[Path]) -> list:
    return [pytest.param(p, id=_rel(p), marks=[pytest.mark.slow] if _rel(p) in SLOW else [])
            for p in paths]


def _teacher_name(cfg: Config) -> str:
    return cfg.teacher.name or teacher_name_for(cfg.model.name)


def _try_load(path: Path) -> Config | None:
    """For collection: a broken preset fails its own tests, not the whole module."""
    try:
        return Config.from_yaml(path)
    except ConfigError:
        return None


# --- tiny data sets in the real on-disk formats ----------------------------------------------
def _write_cifar10(folder: Path) -> tuple[int, int]:
    write_cifar(folder, 10, per_batch=4, n_test=4)  # folder/cifar-10-batches-py/
    return 10, 3


def _write_cifar100(folder: Path) -> tuple[int, int]:
    write_cifar(folder, 100, per_batch=4, n_test=4)  # folder/cifar-100-python/
    return 100, 3


def _write_imagefolder(folder: Path) -> tuple[int, int]:
    write_imagefolder(folder, IMAGEFOLDER_CLASSES, n_train=4, n_val=2, size=36)  # train/, val/
    return IMAGEFOLDER_CLASSES, 3


def _write_fashion_mnist(folder: Path) -> tuple[int, int]:
    write_fmnist(folder)  # the four gzipped IDX files
    return 10, 1


WRITERS = {
    "cifar10": _write_cifar10,
    "cifar100": _write_cifar100,
    "imagefolder": _write_imagefolder,
    "fashion-mnist": _write_fashion_mnist,
}


def _prepare_data(cfg: Config, root: Path) -> tuple[Path, int, int]:
    """Write ``cfg``'s data set where the preset looks for it, relative to the working directory
    ``root`` (an unset or absolute ``data_dir`` is redirected into ``root``); returns that folder,
    the class count and the channel count. A data set without a real on-disk format fails:
    presets are for real data."""
    name = cfg.data.name
    if name not in WRITERS:
        pytest.fail(f"data.name={name!r} has no on-disk format writer in this test (known: "
                    f"{', '.join(WRITERS)}); presets must train on a real data set")
    given = cfg.data.data_dir
    relative = given is not None and not Path(given).is_absolute()
    data_dir = Path(given) if relative else Path(f"data-{name}")
    num_classes, in_chans = WRITERS[name](root / data_dir)
    return data_dir, num_classes, in_chans


def _smoke_overrides(cfg: Config, data_dir: Path) -> list[str]:
    """Two training steps of batch 4 and a 4-image test set, on the CPU."""
    sets = [
        f"data.data_dir={data_dir}", "data.limit_train=8", "data.limit_test=4",
        "data.batch_size=4", "data.eval_batch_size=4", "data.num_workers=0",
        "train.epochs=1", "train.device=cpu", "train.progress=false",
        "train.tensorboard=false", "train.resume=false",
    ]
    if cfg.data.name == "imagefolder":
        sets.append("data.image_size=32")
    return sets


def _save_random_teacher(cfg: Config, num_classes: int, in_chans: int, path: Path) -> Path:
    kw: dict = {"num_classes": num_classes, "in_chans": in_chans}
    if cfg.model.stem is not None:
        kw["stem"] = cfg.model.stem
    if cfg.model.width_mult is not None:
        kw["width_mult"] = cfg.model.width_mult
    torch.save(create_model(_teacher_name(cfg), **kw).state_dict(), path)
    return path


def _check_run(cfg: Config, result: RunResult, root: Path, num_classes: int) -> None:
    assert len(result.history) == 1
    row = result.final
    assert math.isfinite(row["train_loss"]), row
    assert 0.0 <= row["test_top1"] <= 100.0, row
    last = root / cfg.train.out / "last.pth"
    assert last.is_file(), f"no checkpoint at {cfg.train.out}/last.pth"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["model_name"] == cfg.model.name
    assert ckpt["model_kwargs"]["num_classes"] == num_classes
    if cfg.distill.method == "jointrd":
        assert math.isfinite(row["train_ce_paths"]) and row["train_ce_paths"] > 0, row
        if cfg.distill.feature_weight > 0:
            assert math.isfinite(row["train_feat_student"]), row


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh working directory, so the presets' relative data_dir and train.out resolve inside
    it; checkpoints are deleted afterwards (a ResNet-50 JointRD run writes about 1 GB of them)."""
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for f in tmp_path.rglob("*.pth"):
        f.unlink()


# --- every preset ----------------------------------------------------------------------------
def test_the_paper_presets_are_there():
    have = {_rel(p) for p in PRESETS}
    want = {"demo.yaml"}
    for ds in ("cifar10", "cifar100"):
        for d in DEPTHS:
            want |= {f"{ds}/resnet{d}-teacher.yaml", f"{ds}/plain{d}-jointrd.yaml",
                     f"{ds}/plain{d}-jointrd-fullyplain.yaml"}
    for d in DEPTHS:
        want |= {f"imagenet/plain{d}-jointrd.yaml", f"imagenet/plain{d}-jointrd-fullyplain.yaml"}
    assert not want - have, f"missing presets: {sorted(want - have)}"


@pytest.mark.parametrize("path", _params(PRESETS))
def test_preset_loads_validates_and_names_registered_models(path: Path):
    cfg = Config.from_yaml(path).validate()
    assert is_model(cfg.model.name), cfg.model.name
    if cfg.distill.method in TEACHER_METHODS:
        assert is_model(_teacher_name(cfg)), _teacher_name(cfg)
        assert cfg.teacher.checkpoint or cfg.teacher.weights or cfg.teacher.train, \
            "a distillation preset must say where its teacher comes from"
    # the command line in the header comment names this very preset
    assert f"--preset {_rel(path)[: -len('.yaml')]}" in path.read_text()


def test_presets_are_found_by_name_with_a_one_line_description():
    names = list_presets()
    assert names == sorted(_rel(p)[: -len(".yaml")] for p in PRESETS)
    for name in names:
        assert Config.from_yaml(CONFIGS / f"{name}.yaml") == load_preset(name)
        description = preset_description(name)
        assert description and "\n" not in description and description.endswith(".")
    with pytest.raises(ConfigError, match="Did you mean cifar100/plain18-jointrd"):
        load_preset("cifar100/plain18-jointd")


@pytest.mark.parametrize("path", _params(PRESETS))
def test_preset_trains_on_its_on_disk_format(path: Path, workdir: Path):
    cfg = Config.from_yaml(path)
    data_dir, num_classes, in_chans = _prepare_data(cfg, workdir)
    sets = _smoke_overrides(cfg, data_dir)
    if cfg.distill.method in TEACHER_METHODS:
        weights = _save_random_teacher(cfg, num_classes, in_chans, workdir / "teacher.pth")
        sets += ["teacher.checkpoint=null", f"teacher.weights={weights}"]
    cfg.override(sets)
    _check_run(cfg, train(cfg), workdir, num_classes)


# --- recipe values (docs/method.md sections 3 and 5) ----------------------------------------------
def _in_folder(*folders: str) -> list[Path]:
    return [p for p in PRESETS if _rel(p).split("/")[0] in folders and "/" in _rel(p)]


def _check_sgd(cfg: Config) -> None:
    assert cfg.optim.nesterov and cfg.optim.momentum == 0.9 and cfg.optim.warmup_epochs == 0


@pytest.mark.parametrize("path", _params(_in_folder("cifar10", "cifar100")))
def test_cifar_recipe(path: Path):
    cfg = Config.from_yaml(path)
    assert cfg.data.name == _rel(path).split("/")[0]
    assert cfg.data.batch_size == 128 and cfg.optim.lr == 0.1 and cfg.optim.weight_decay == 5e-4
    assert cfg.data.augment and cfg.data.hflip and cfg.data.crop_padding in (None, 4)
    assert cfg.model.stem == "cifar"  # ImageNet-width nets on 32x32 inputs
    _check_sgd(cfg)
    if cfg.model.name.startswith("resnet"):  # teachers: 300 epochs, cosine
        assert cfg.distill.method == "ce"
        assert cfg.train.epochs == 300 and cfg.optim.schedule == "cosine"
        return
    assert cfg.train.epochs == 200 and cfg.optim.schedule == "multistep"
    assert cfg.optim.milestones == [0.5, 0.75] and cfg.optim.gamma == 0.1  # epochs 100, 150
    if cfg.distill.method == "jointrd":
        assert cfg.distill.dc == 0.5 and cfg.distill.feature_weight == 1e-3
        assert cfg.distill.decay_fraction == 0.3  # 60 of 200 epochs
        assert cfg.distill.path_loss == "ce" and not cfg.teacher.train
        assert cfg.model.keep_downsample_shortcuts == (not path.stem.endswith("-fullyplain"))


@pytest.mark.parametrize("path", _params(_in_folder("imagenet")))
def test_imagenet_recipe(path: Path):
    cfg = Config.from_yaml(path)
    assert cfg.data.name == "imagefolder" and cfg.data.image_size == 224
    # written for 8 GPUs: global batch 512 = batch_size x 8 processes x accum_steps
    assert cfg.data.batch_size * 8 * cfg.train.accum_steps == 512
    assert cfg.train.amp == "auto"  # bf16 on GPUs that have it, else fp16 with loss scaling
    assert cfg.optim.lr == 0.2 and cfg.optim.weight_decay == 1e-4
    assert cfg.train.epochs == 120 and cfg.optim.schedule == "step"
    assert cfg.optim.step_size == 30 and cfg.optim.gamma == 0.1
    assert cfg.model.stem in (None, "imagenet")
    _check_sgd(cfg)
    if cfg.distill.method == "jointrd":
        assert cfg.distill.dc == 5e-3 and cfg.distill.feature_weight == 1e-4
        assert cfg.distill.decay_fraction == 0.5  # 60 of 120 epochs
        assert cfg.distill.path_loss == "ce" and not cfg.teacher.train
        assert cfg.teacher.weights == "IMAGENET1K_V1"  # the 69.76 / 73.31 / 76.13% teachers
        assert cfg.model.keep_downsample_shortcuts == (not path.stem.endswith("-fullyplain"))


@pytest.mark.parametrize("name", list(SUITES))
def test_each_accuracy_suite_runs_its_preset_without_progress_bars(name):
    suite = Config.from_dict(suite_settings(name))
    assert not suite.train.progress and not suite.train.tensorboard
    suite.train.progress = True
    assert suite == load_preset(SUITES[name].preset)


def test_the_long_suite_trains_three_times_the_short_suite_per_run():
    short, long = (Config.from_dict(suite_settings(n)) for n in ("fashion-mnist", "fashion-mnist-long"))
    per_run = [(c.data.limit_train or 60000) * c.train.epochs for c in (short, long)]
    assert per_run[1] >= 3 * per_run[0]


# --- the student presets read the checkpoints the teacher presets write ----------------------
def _reads_a_teacher_checkpoint(path: Path) -> bool:
    cfg = _try_load(path)
    return cfg is not None and cfg.distill.method in TEACHER_METHODS \
        and cfg.teacher.checkpoint is not None


STUDENTS = [p for p in PRESETS if _reads_a_teacher_checkpoint(p)]


def _teacher_preset(student: Config) -> Path | None:
    """The preset whose run writes ``student.teacher.checkpoint``."""
    want = Path(student.teacher.checkpoint)
    for p in PRESETS:
        cfg = _try_load(p)
        if cfg is not None and Path(cfg.train.out) / "last.pth" == want:
            return p
    return None


@pytest.mark.parametrize("path", _params(STUDENTS))
def test_teacher_checkpoint_comes_from_a_matching_teacher_preset(path: Path):
    student = Config.from_yaml(path)
    found = _teacher_preset(student)
    assert found is not None, f"no preset writes {student.teacher.checkpoint}"
    teacher = Config.from_yaml(found)
    assert teacher.model.name == _teacher_name(student) and teacher.distill.method == "ce"
    assert (teacher.data.name, teacher.model.stem) == (student.data.name, student.model.stem)


def test_teacher_preset_then_student_preset(workdir: Path):
    """The documented two-command pipeline with the presets' own paths: the teacher preset
    writes runs/.../last.pth and the student preset reads it as its teacher.checkpoint."""
    student = Config.from_yaml(CONFIGS / "cifar10" / "plain18-jointrd.yaml")
    teacher_path = _teacher_preset(student)
    assert teacher_path is not None
    teacher = Config.from_yaml(teacher_path)
    data_dir, num_classes, _ = _prepare_data(teacher, workdir)
    train(teacher.override(_smoke_overrides(teacher, data_dir)))
    assert (workdir / student.teacher.checkpoint).is_file()
    student.override(_smoke_overrides(student, data_dir))
    _check_run(student, train(student), workdir, num_classes)
