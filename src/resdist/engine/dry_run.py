"""What a run would do, without doing it: ``resdist train --dry-run``."""

from __future__ import annotations

import copy
import os

from ..config import Config
from ..data.contract import InputContract, contract_for_data
from ..data.errors import DataError
from ..data.imagefolder import imagefolder_root
from ..models import teacher_name_for
from ..models.pretrained import is_weights_file
from ..models.summary import summarize_model
from .build import TEACHER_METHODS, build_all
from .checkpoint import load_checkpoint

__all__ = ["dry_run_text"]


def dry_run_text(cfg: Config) -> str:
    """The resolved config as YAML, the objective and teacher, a summary of the model it trains
    (parameters, MACs, per-stage output shapes) and the run directory; nothing is written and
    no image is read.

    The networks are built as training would build them: teacher checkpoints and weight files
    are loaded and checked (classes, shapes, stem, stages against the student), so a teacher
    that does not fit fails here, with the same message, instead of after the data is read.
    Published weights (``DEFAULT``, a timm tag) are not fetched; the ImageFolder's
    ``train/`` class folders are listed for the class count. Files and folders that do not
    exist yet (the teacher of a two-step recipe) are named in a "the run would stop here" line.
    """
    contract, notes = _contract(cfg)
    num_classes = len(contract.class_names) or 1000
    check, more = _without_downloads(cfg)
    notes += more
    model, *_ = build_all(check, num_classes, contract.input_shape[0], contract.input_shape)
    lines = [cfg.to_yaml().rstrip(), "", f"model {cfg.model.name}, trained with "
             f"{cfg.distill.method}"]
    if cfg.distill.method in TEACHER_METHODS:
        lines[-1] += _teacher_text(cfg)
    lines += notes
    lines.append(summarize_model(model, contract.input_shape).format())
    lines.append(f"run directory (not created): {cfg.train.out}")
    return "\n".join(lines)


def _contract(cfg: Config) -> tuple[InputContract, list[str]]:
    """The contract training would record (ImageFolder classes from ``train/``), and a line
    when the ImageFolder is missing."""
    d, notes = cfg.data, []
    synthetic = d.name == "synthetic"
    data_dir = d.data_dir
    if d.name == "imagefolder":
        try:
            data_dir = str(imagefolder_root(d.data_dir))
        except DataError as e:
            notes.append(f"the run would stop here: {e}")
    contract = contract_for_data(
        d.name, in_chans=d.synthetic_channels if synthetic else None,
        image_size=d.synthetic_size if synthetic else (d.image_size if d.name == "imagefolder"
                                                      else None),
        num_classes=d.synthetic_classes if synthetic else None, data_dir=data_dir,
    )
    return contract, notes


def _without_downloads(cfg: Config) -> tuple[Config, list[str]]:
    """A copy of ``cfg`` that builds the same networks without fetching published weights
    (the teacher is then built untrained), and a line for each weights left out."""
    check, notes = copy.deepcopy(cfg), []
    if cfg.distill.method not in TEACHER_METHODS:
        check.teacher.checkpoint = check.teacher.weights = None
    for what, section in (("teacher", check.teacher), ("model", check.model)):
        if section.weights and not is_weights_file(section.weights):
            notes.append(f"{what} weights {section.weights}: published weights, fetched when "
                         "training starts (not checked now)")
            section.weights = None
        elif section.weights and not os.path.isfile(section.weights):
            notes.append(f"the run would stop here: {what} weights file {section.weights} not "
                         "found (fix the path, or create the file first)")
            section.weights = None
    path = check.teacher.checkpoint
    if path and not _checkpoint_found(path):
        notes.append(f"the run would stop here: teacher checkpoint {path} not found (train the "
                     "teacher first, or fix --teacher-checkpoint)")
        check.teacher.checkpoint = None
    if cfg.distill.method in TEACHER_METHODS and not (check.teacher.checkpoint or
                                                      check.teacher.weights):
        check.teacher.train = True  # builds the teacher's layout, for the stage check
    return check, notes


def _checkpoint_found(path: str) -> bool:
    """Whether ``path`` is a checkpoint file or a run folder holding one (a FIFO or a device
    is neither)."""
    return os.path.isfile(path) or os.path.isfile(os.path.join(path, "last.pth"))


def _teacher_text(cfg: Config) -> str:
    name = cfg.teacher.name or teacher_name_for(cfg.model.name)
    if cfg.teacher.checkpoint or cfg.teacher.weights:
        given = cfg.teacher.checkpoint or cfg.teacher.weights
        found = _checkpoint_found(given) if cfg.teacher.checkpoint else (
            os.path.isfile(given) and is_weights_file(given))
        if found and cfg.teacher.checkpoint:
            name = load_checkpoint(given).model_name  # the network it holds, checked by now
        checked = ", loaded and checked" if found else ""
        return f" through teacher {name} ({cfg.teacher.checkpoint or cfg.teacher.weights}" \
            f"{checked})"
    if cfg.teacher.train:
        return f" through teacher {name} (co-trained from random weights)"
    return ("; no teacher given: the run would stop, pass --teacher-checkpoint or "
            "--teacher-weights (or --set teacher.train=true)")
