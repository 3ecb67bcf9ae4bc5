"""What a run would do, without doing it: ``resdist train --dry-run``."""

from __future__ import annotations

from ..config import Config
from ..data.contract import contract_for_data
from ..models import create_model, teacher_name_for
from ..models.summary import summarize_model
from .build import TEACHER_METHODS, model_kwargs

__all__ = ["dry_run_text"]


def dry_run_text(cfg: Config) -> str:
    """The resolved config as YAML, the objective and teacher, a summary of the model it trains
    (parameters, MACs, per-stage output shapes) and the run directory; no data is read and
    nothing is written."""
    d = cfg.data
    synthetic = d.name == "synthetic"
    contract = contract_for_data(
        d.name, in_chans=d.synthetic_channels if synthetic else None,
        image_size=d.synthetic_size if synthetic else (d.image_size if d.name == "imagefolder"
                                                      else None),
        num_classes=d.synthetic_classes if synthetic else None, data_dir=d.data_dir,
    )
    num_classes = len(contract.class_names) or 1000
    model = create_model(cfg.model.name,
                         **model_kwargs(cfg.model, num_classes, contract.input_shape[0]))
    lines = [cfg.to_yaml().rstrip(), "", f"model {cfg.model.name}, trained with "
             f"{cfg.distill.method}"]
    if cfg.distill.method in TEACHER_METHODS:
        lines[-1] += _teacher_text(cfg)
    lines.append(summarize_model(model, contract.input_shape).format())
    lines.append(f"run directory (not created): {cfg.train.out}")
    return "\n".join(lines)


def _teacher_text(cfg: Config) -> str:
    name = cfg.teacher.name or teacher_name_for(cfg.model.name)
    if cfg.teacher.checkpoint or cfg.teacher.weights:
        return f" through teacher {name} ({cfg.teacher.checkpoint or cfg.teacher.weights})"
    if cfg.teacher.train:
        return f" through teacher {name} (co-trained from random weights)"
    return ("; no teacher given: the run would stop, pass --teacher-checkpoint or "
            "--teacher-weights (or --set teacher.train=true)")
