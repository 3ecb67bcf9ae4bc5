"""Training engine: loop, evaluation, checkpoints, optimiser/schedules, DDP helpers."""

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

__all__ = [
    "Checkpoint", "CheckpointError", "CheckpointScore", "build_optimizer", "build_scheduler",
    "evaluate", "evaluate_checkpoint", "load_checkpoint", "model_from_checkpoint",
    "param_groups", "save_checkpoint",
]
