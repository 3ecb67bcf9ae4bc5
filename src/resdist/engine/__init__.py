"""Training engine: loop, evaluation, checkpoints, optimiser/schedules, DDP helpers."""

from typing import TYPE_CHECKING

from ..lazy import lazy_exports

_EXPORTS: dict[str, tuple[str, ...]] = {
    ".checkpoint": ("Checkpoint", "CheckpointError", "load_checkpoint", "model_from_checkpoint",
        "save_checkpoint"),
    ".evaluation": ("CheckpointScore", "evaluate_checkpoint"),
    ".metrics": ("evaluate",),
    ".optim": ("build_optimizer", "build_scheduler", "param_groups"),
}

__all__ = [
    "Checkpoint", "CheckpointError", "CheckpointScore", "build_optimizer", "build_scheduler",
    "evaluate", "evaluate_checkpoint", "load_checkpoint", "model_from_checkpoint",
    "param_groups", "save_checkpoint",
]

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:  # for type checkers; at run time each name is imported on first use
    from .checkpoint import (
        Checkpoint,
        CheckpointError,
        load_checkpoint,
        model_from_checkpoint,
        save_checkpoint,
    )
    from .evaluation import CheckpointScore, evaluate_checkpoint
    from .metrics import evaluate
    from .optim import build_optimizer, build_scheduler, param_groups
