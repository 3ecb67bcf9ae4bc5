"""The training loop: one config in, a run directory with checkpoints and metrics out.

``train(cfg)`` checks and locks the run directory (:mod:`resdist.engine.rundir`), builds data,
networks and the objective from a :class:`~resdist.config.Config`, then steps SGD over the
objective's loss, evaluates every epoch, writes ``last.pth`` (and ``best.pth``) atomically and
only then appends the epoch's row to ``metrics.csv``/``metrics.jsonl`` (and TensorBoard), and
can resume (the logs are then made to hold one row per checkpointed epoch).

Distributed (``torchrun --nproc-per-node N -m resdist train ...``, any method): each process
trains a DistributedDataParallel replica of the objective (NCCL, one GPU per process; gloo on
CPU). Every epoch the ranks draw one shared permutation of the training set and take strided
slices of it, so one step consumes ``data.batch_size`` images per process; the **global batch is
``data.batch_size * world_size``** and ``optim.lr`` is the learning rate **for that global
batch** (DDP averages gradients over ranks, so a step equals one step over the global batch:
keep ``lr`` when you change the number of processes at a fixed global batch, scale it yourself
when the global batch changes). Evaluation shards the validation/test sets disjointly and sums
the counts; training metrics are averaged over all ranks. Only rank 0 writes the run directory;
all ranks resume from its ``last.pth``. ``train.sync_bn`` computes BatchNorm statistics over the
global batch (also on CPU); without it each process normalises with its own batch.

Precision and speed: ``train.amp`` (``bf16``, or ``fp16`` with a GradScaler on CUDA) runs
forward passes under autocast, evaluation included; ``train.channels_last`` keeps weights and
images NHWC (except strided 1x1 convolutions with few input channels, which oneDNN gets wrong:
:mod:`resdist.models.memory_format`); ``train.compile`` wraps the step in :func:`torch.compile` (CPU needs a C++
compiler).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import random
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..atomic import write_text_atomic
from ..config import Config, ConfigError
from ..data import build_data
from ..data.contract import contract_from_bundle
from ..data.errors import DataError
from ..data.locations import absolute_data_dir
from ..errors import ResdistError
from ..models.memory_format import channels_last_note, to_channels_last
from .build import build_all
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    check_state_like,
    load_checkpoint,
    load_weights,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .denormals import set_flush_denormal
from .distributed import (
    DistInfo,
    all_reduce_sum,
    all_true,
    any_rank_true,
    barrier,
    broadcast_buffers,
    broadcast_object,
    convert_sync_batchnorm,
    init_distributed,
    local_main_first,
    resolve_device,
)
from .metrics import MetricsLogger, evaluate, topk_correct
from .optim import build_optimizer, build_scheduler
from .rundir import RunDirError, discard_unstarted_run, open_run_dir

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
TEACHER_RECORD = "teacher.json"  # the frozen teacher's accuracy, measured before training


class TrainingError(ResdistError, FloatingPointError):
    """Training cannot go on (a non-finite loss); the message names the step and what to do."""


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX-BF16); without it, bf16
    autocast on the CPU is emulated and many times slower than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(re.findall(r"\b(avx512_bf16|amx_bf16)\b", f.read()))
        return bool(flags)
    except OSError:
        return "AMX" in torch.backends.cpu.get_cpu_capability()


@dataclass
class RunResult:
    """What a finished run produced."""

    run_dir: Path
    history: list[dict[str, Any]] = field(default_factory=list)
    train_time_s: float = 0.0
    num_params: int = 0

    @property
    def final(self) -> dict[str, Any]:
        return self.history[-1] if self.history else {}

    def best(self, key: str = "test_top1") -> float | None:
        vals = [r[key] for r in self.history if key in r]
        return max(vals) if vals else None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def no_buffer_sync_kwargs() -> dict[str, bool]:
    """DistributedDataParallel's argument for "do not sync buffers before each forward":
    ``forward_sync_buffers=False`` where this torch has it (``broadcast_buffers`` then warns
    that it is deprecated), else ``broadcast_buffers=False``."""
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    if "forward_sync_buffers" in params:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def check_distributed_options(cfg: Config, info: DistInfo) -> None:
    """Refuse option combinations that cannot work in this job, before anything is built."""
    if cfg.train.compile and cfg.train.sync_bn and info.enabled:
        raise ConfigError(
            "train.compile with train.sync_bn under DDP is not supported (the synchronised "
            "BatchNorm's collectives break the compiled graph at every layer): drop one of them"
        )


def train(cfg: Config) -> RunResult:
    """Run the training ``cfg`` describes and return its history (see module docstring).

    Under torchrun every rank calls this; rank 0's result holds the full history (other ranks
    return the rows of this session only). The process group is created on the first call and
    reused by later ones (it is destroyed at interpreter exit).
    """
    cfg.validate()
    # the data folder is recorded absolute (config.yaml, checkpoints), so that eval, export and
    # --resume find it from any working directory
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, data_dir=absolute_data_dir(cfg.data.name, cfg.data.data_dir)))
    info = init_distributed(cfg.train.device, timeout_min=cfg.train.dist_timeout_min)
    check_distributed_options(cfg, info)
    device = resolve_device(cfg.train.device, info)
    # the run directory is checked and locked by rank 0 before anything is built or written
    lock, refusal = None, None
    if info.is_main:
        try:
            lock = open_run_dir(cfg, say=tqdm.write)
        except RunDirError as e:
            refusal = str(e)
    refusal = broadcast_object(refusal)
    if refusal is not None:
        raise RunDirError(refusal)
    try:
        return _train(cfg, info, device)
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through the CLI: say what is kept
        out = Path(cfg.train.out)
        if lock is not None and lock.fresh:
            discard_unstarted_run(out)
        if e.args or not info.is_main:
            raise
        kept = ((out / "last.pth").exists() and
                f"{out / 'last.pth'} is kept; continue with --resume")
        raise type(e)(kept or "it stopped before its first checkpoint and nothing was kept; "
                      "train again") from None
    except BaseException:
        if lock is not None and lock.fresh:  # nothing worth keeping was written
            discard_unstarted_run(Path(cfg.train.out), keep=lock.preexisting)
        raise
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, info: DistInfo, device: torch.device) -> RunResult:
    if device.type == "cpu":  # deep plain nets at init produce denormals: 10x slower on CPU
        set_flush_denormal(True)
    else:  # fixed batch shapes (drop_last): let cuDNN pick the fastest convolutions
        torch.backends.cudnn.benchmark = True
    seed_everything(cfg.train.seed + info.rank)  # DDP then copies rank 0's initial weights
    with local_main_first():  # downloads (data, teacher weights): one process per node
        data = build_data(cfg.data, device=device, seed=cfg.train.seed, rank=info.rank,
                          world_size=info.world_size, shard_eval=info.enabled)
        input_shape = (data.in_chans, data.image_size, data.image_size)
        _, kw, teacher, source, objective = build_all(
            cfg, data.num_classes, data.in_chans, input_shape
        )
    objective.to(device)
    kept_nchw = to_channels_last(objective) if cfg.train.channels_last else []
    if cfg.train.sync_bn and info.enabled:
        objective = convert_sync_batchnorm(objective)
    trainer = Trainer(cfg, objective, data, device, info, kw)  # its model: objective.student
    for note in (*data.notes, channels_last_note(kept_nchw),
                 small_features_note(trainer.model, trainer.input_shape)):
        if note:
            trainer.say(note)
    if teacher is not None:
        trainer.report_teacher(teacher, cfg.teacher.name or type(teacher).__name__, source)
    return trainer.fit()


@torch.no_grad()
def small_features_note(model: nn.Module, input_shape: Sequence[int]) -> str:
    """A warning when the last stage's feature maps are 1x1 or smaller (the ImageNet stem on
    small images: little spatial information is left to learn from); else ``""``."""
    features = getattr(model, "forward_features", None)  # stem and every stage
    if features is None:
        return ""
    was_training = model.training
    model.eval()
    p = next(model.parameters())
    try:
        out = features(torch.zeros(1, *input_shape, device=p.device, dtype=p.dtype))
    finally:
        model.train(was_training)
    h, w = out.shape[-2:]
    if h > 1 or w > 1:
        return ""
    return (f"warning: {input_shape[1]}x{input_shape[2]} images leave {h}x{w} feature maps at "
            "the last stage of this network; for small images use --stem cifar")


def amp_setup(
    amp: str | None, device: torch.device
) -> tuple[torch.dtype | None, torch.amp.GradScaler]:
    """The autocast dtype of ``train.amp`` (None: fp32) and the gradient scaler, which scales
    losses only for fp16 on CUDA. ``auto``: on CUDA bf16 where the GPU supports it natively
    (A100, H100), else fp16 with loss scaling (V100, T4); on a CPU fp32."""
    if amp == "auto":
        amp = None if device.type != "cuda" else (
            "bf16" if torch.cuda.is_bf16_supported() else "fp16")
    amp_dtype = AMP_DTYPES.get(amp) if amp else None
    use_scaler = amp_dtype is torch.float16 and device.type == "cuda"
    return amp_dtype, torch.amp.GradScaler(device.type, enabled=use_scaler)


def forward_losses(
    module: nn.Module, images: torch.Tensor, labels: torch.Tensor,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """The objective's outputs (``loss`` and its terms, ``logits``) under autocast when
    ``amp_dtype`` is given."""
    with torch.autocast(images.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        return module(images, labels)


def accumulate_gradients(
    module: nn.Module,
    scaler: torch.amp.GradScaler,
    images: torch.Tensor,
    labels: torch.Tensor,
    amp_dtype: torch.dtype | None = None,
    scale: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Forward under autocast and backward of ``loss * scale`` (gradients add up in ``.grad``).

    No host synchronisation: the caller checks the returned loss for finiteness when it wants.
    """
    out = forward_losses(module, images, labels, amp_dtype)
    loss = out["loss"]
    scaler.scale(loss * scale if scale != 1.0 else loss).backward()
    return out


def accumulation_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    amp_dtype: torch.dtype | None = None,
) -> list[dict[str, torch.Tensor]]:
    """One optimiser step over ``k`` micro-batches: each loss is scaled by ``1/k``, so with equal
    micro-batch sizes the step equals one step over their union (for batch-independent layers;
    BatchNorm normalises each micro-batch by itself). Under DDP (``module`` is a
    DistributedDataParallel) gradients are all-reduced only on the last micro-batch
    (``no_sync`` on the others). Returns each micro-batch's outputs."""
    k = len(micro_batches)
    optimizer.zero_grad(set_to_none=True)
    outs = []
    no_sync = getattr(module, "no_sync", None)
    for j, (images, labels) in enumerate(micro_batches):
        defer = no_sync is not None and j < k - 1
        with no_sync() if defer else contextlib.nullcontext():  # type: ignore[misc]
            outs.append(accumulate_gradients(module, scaler, images, labels, amp_dtype, 1.0 / k))
    scaler.step(optimizer)
    scaler.update()
    return outs


class Trainer:
    """Owns the optimiser, scheduler, AMP scaler, loggers and checkpoints of one run.

    ``objective`` (already on ``device``) is what a step calls; it is wrapped in
    DistributedDataParallel when ``info`` says the job is distributed (parameters the objective
    freezes, such as a frozen teacher's, are not synchronised) and in :func:`torch.compile` when
    ``train.compile`` is set. Its ``student`` is what is evaluated and checkpointed (built by
    the registry with ``model_kwargs``, which the checkpoint records); the input shape is the
    data's.
    """

    def __init__(self, cfg: Config, objective: nn.Module, data, device, info: DistInfo,
                 model_kwargs: dict) -> None:
        self.cfg, self.objective, self.model, self.data = cfg, objective, objective.student, data
        self.device, self.info = device, info
        self.model_kwargs = model_kwargs
        self.input_shape = (data.in_chans, data.image_size, data.image_size)
        # what the model expects, and where its images live (absolute, see train())
        self.input_contract = contract_from_bundle(data, data_dir=cfg.data.data_dir)
        self.epochs = cfg.train.epochs
        self.run_dir = Path(cfg.train.out)
        self.logger: MetricsLogger | None = None
        if info.is_main:  # train() has checked and locked the folder
            self.logger = MetricsLogger(self.run_dir, tensorboard=cfg.train.tensorboard)
            self.logger.note(f"# {time.strftime('%Y-%m-%d %H:%M:%S')}: resdist train into "
                             f"{self.run_dir}{' (--resume)' if cfg.train.resume else ''}")
        self.accum_steps = cfg.train.accum_steps
        self.steps_per_epoch = len(data.train) // self.accum_steps
        if self.steps_per_epoch < 1:
            raise ConfigError(
                f"train.accum_steps={self.accum_steps} exceeds the {len(data.train)} batches per "
                "epoch: lower it (or data.batch_size)"
            )
        self.optimizer = build_optimizer(objective, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.epochs,
                                         self.steps_per_epoch)
        self.amp_dtype, self.scaler = amp_setup(cfg.train.amp, device)
        if self.amp_dtype is torch.float16 and not self.scaler.is_enabled():
            self.say(f"train.amp=fp16 on {device.type} runs without loss scaling; bf16 is safer")
        if self.amp_dtype is torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
            self.say("warning: this CPU has no native bf16 (AVX512-BF16/AMX): --amp bf16 is "
                     "emulated and much slower than fp32; leave --amp off on this machine")
        self.step_module: nn.Module = objective
        self.ddp: nn.parallel.DistributedDataParallel | None = None
        if info.enabled:
            ids = [device.index] if device.type == "cuda" else None
            # No buffer broadcast at every step: BatchNorm statistics are synchronised by
            # sync-BN or, without it, copied from rank 0 before each evaluation
            # (broadcast_buffers). At construction the buffers are still their constant
            # initial values (BN statistics, Dirac kernels), so syncing them then is harmless.
            self.ddp = nn.parallel.DistributedDataParallel(
                objective, device_ids=ids, gradient_as_bucket_view=True, **no_buffer_sync_kwargs()
            )
            self.step_module = self.ddp
        if cfg.train.compile:
            self.step_module = torch.compile(self.step_module)
        self.start_epoch = 0
        if cfg.train.resume:
            self._resume()
        if info.is_main:  # only once the checkpoint (if any) has been found to fit
            cfg.to_yaml(self.run_dir / "config.yaml")
        self.num_params = sum(p.numel() for p in self.model.parameters())

    # ------------------------------------------------------------------------------------
    def report_teacher(self, teacher: nn.Module, name: str, source: str) -> None:
        """Say where the teacher comes from and, for a trained (frozen) teacher of a new run,
        its top-1 on the validation split (else the test split): what the student is chasing.
        The figure is kept in ``teacher.json`` beside the run's metrics."""
        line = f"teacher: {name} from {source}"
        if self.cfg.teacher.train or self.start_epoch > 0:
            self.say(line)
            return
        split, loader = ("val", self.data.val) if self.data.val is not None else \
            ("test", self.data.test)
        m = evaluate(teacher, loader, amp_dtype=self.amp_dtype,
                     channels_last=self.cfg.train.channels_last)
        self.say(f"{line}: {split} top-1 {m['top1']:.2f}% ({int(m['samples'])} images)")
        if self.info.is_main:
            record = {"name": name, "source": source, "split": split, **m}
            write_text_atomic(self.run_dir / TEACHER_RECORD, json.dumps(record, indent=1) + "\n")

    def say(self, msg: str) -> None:
        """Print ``msg`` on the console (rank 0) and append it to the run's ``train.log``."""
        if self.info.is_main:
            tqdm.write(msg)
            if self.logger is not None:
                self.logger.note(msg)

    def _load_last(self, path: Path) -> Checkpoint | None:
        """``last.pth`` on every rank, or None when rank 0 has none. Ranks that see the file
        read it; if some cannot (a run directory not shared between nodes), rank 0 sends its
        copy to all."""
        barrier()  # rank 0 has finished writing anything it wrote before
        here = path.exists()
        if all_true(here, self.device):
            return load_checkpoint(path, map_location=self.device)
        if not broadcast_object(here):
            return None
        ckpt = load_checkpoint(path, map_location="cpu") if self.info.is_main else None
        return broadcast_object(ckpt)  # type: ignore[return-value]

    def _resume(self) -> None:
        path = self.run_dir / "last.pth"
        ckpt = self._load_last(path)
        if ckpt is None:
            if self.logger is not None:
                self.logger.reconcile(0)
            self.say(f"resume: no checkpoint at {path}, starting from scratch")
            return
        load_weights(self.model, ckpt.state_dict, str(path))
        result = load_weights(self.objective, ckpt.objective or {}, str(path), strict=False)
        skipped = self._not_checkpointed()
        bad = [k for k in result.missing_keys if not k.startswith(skipped)]
        if bad or result.unexpected_keys:
            raise CheckpointError(
                f"{path} does not match this run's objective (missing {bad[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})"
            )
        if ckpt.optimizer is None or ckpt.scheduler is None:
            raise CheckpointError(f"{path} holds no optimiser state (a weights-only file) and "
                                  "cannot be resumed; start anew with --overwrite")
        self._check_training_state(ckpt, path)
        try:
            self.optimizer.load_state_dict(ckpt.optimizer)
            self.scheduler.load_state_dict(ckpt.scheduler)
            if ckpt.scaler:
                self.scaler.load_state_dict(ckpt.scaler)
            if ckpt.rng and not self.info.enabled:
                set_rng_state(ckpt.rng)
        except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as e:
            raise CheckpointError(f"{path}: its optimiser, scheduler or RNG state does not fit "
                                  f"this run ({type(e).__name__}: {e}); start anew with "
                                  "--overwrite") from e
        for param, state in self.optimizer.state.items():  # torch checks no shapes itself
            for name, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() and \
                        value.shape != param.shape:
                    raise CheckpointError(
                        f"{path}: its optimiser state {name!r} has shape {tuple(value.shape)} "
                        f"for a parameter of shape {tuple(param.shape)}; the file is damaged; "
                        "start anew with --overwrite")
        self.start_epoch = ckpt.epoch
        if self.logger is not None:  # one row per checkpointed epoch, whatever the crash left
            self.logger.reconcile(self.start_epoch, ckpt.metrics)
        self.say(f"resumed from {path} after epoch {self.start_epoch}")
        self._replan(ckpt)

    def _replan(self, ckpt: Checkpoint) -> None:
        """Follow this run's ``train.epochs`` from the resumed step on: the LR schedule (and
        JointRD's m(e)) are functions of the fraction of the run done, so a run continued for
        more (or fewer) epochs than it was planned for is re-planned over the new total, and
        the LR of its next step is set from the new plan (the loaded optimiser still holds
        the old plan's); a line says so."""
        sched = self.scheduler
        old_lr = self.optimizer.param_groups[0]["lr"]
        for group, factor, base in zip(self.optimizer.param_groups, sched.lr_lambdas,
                                       sched.base_lrs):
            group["lr"] = base * factor(sched.last_epoch)
        sched._last_lr = [g["lr"] for g in self.optimizer.param_groups]  # get_last_lr()
        planned = ((ckpt.config or {}).get("train") or {}).get("epochs")
        if not isinstance(planned, int) or planned == self.epochs:
            return
        what = f"the {self.cfg.optim.schedule} LR schedule"
        if self.cfg.distill.method == "jointrd":
            what += " and JointRD's decay m(e)"
        self.say(f"resume: train.epochs {planned} -> {self.epochs}: {what} re-planned over "
                 f"{self.epochs} epochs from epoch {self.start_epoch + 1} on (LR "
                 f"{old_lr:.3g} -> {self.optimizer.param_groups[0]['lr']:.3g}); the first "
                 f"{self.start_epoch} epochs followed the {planned}-epoch plan, so for a run "
                 f"equal to a fresh {self.epochs}-epoch one start anew with --overwrite")

    def _check_training_state(self, ckpt: Checkpoint, path: Path) -> None:
        """Refuse optimiser and scheduler state whose fields differ in kind from this run's
        (torch would load them and fail mid-training)."""
        check_state_like(self.scheduler.state_dict(), ckpt.scheduler, f"{path}: scheduler")
        optimizer = ckpt.optimizer or {}
        check_state_like(self.optimizer.state_dict()["param_groups"],
                         optimizer.get("param_groups"), f"{path}: optimizer.param_groups")
        state = optimizer.get("state")
        if not isinstance(state, dict) or not all(
                isinstance(s, dict) and all(v is None or isinstance(v, torch.Tensor | int | float)
                                            for v in s.values()) for s in state.values()):
            raise CheckpointError(f"{path}: optimizer.state must map parameters to their "
                                  "tensors; the file is damaged or was not written by resdist; "
                                  "start anew with --overwrite")

    def _not_checkpointed(self) -> tuple[str, ...]:
        """Objective state kept out of ``objective`` in checkpoints: the student (saved as
        ``model``) and what the objective rebuilds itself (a frozen teacher)."""
        return ("student.", *self.objective.rebuilt_state)

    def _checkpoint(self, epoch: int, metrics: dict[str, Any], best: bool) -> None:
        if not self.info.is_main:
            return
        skipped = self._not_checkpointed()
        objective_state = {k: v for k, v in self.objective.state_dict().items()
                           if not k.startswith(skipped)}
        state = Checkpoint(
            self.cfg.model.name, self.model_kwargs, self.model.state_dict(),
            contract=self.input_contract, epoch=epoch, config=self.cfg.to_dict(),
            metrics=metrics, objective=objective_state, optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(), scaler=self.scaler.state_dict(),
            rng=rng_state(),
        )
        # best.pth first: if it cannot be written, last.pth still holds the epoch before, so
        # --resume trains this epoch again and writes best.pth then
        files = []
        if best and self.cfg.train.save_best:
            files.append(("best.pth", state.weights_only() if self.cfg.train.best_weights_only
                          else state))
        files.append(("last.pth", state))
        for name, saved in files:
            try:
                save_checkpoint(saved, self.run_dir / name)
            except CheckpointError as e:
                raise CheckpointError(
                    f"{e}; {self._kept(epoch - 1)} and the metrics of epoch {epoch} are not "
                    "written; make room and continue with --resume"
                ) from e

    def _kept(self, epoch: int) -> str:
        """What survives a failure after ``epoch`` completed epochs, for error messages."""
        if epoch > 0:
            return f"the last good checkpoint {self.run_dir / 'last.pth'} (epoch {epoch}) is kept"
        return "no checkpoint was written yet"

    def _evaluate(self) -> dict[str, float]:
        """Validation and test metrics; each rank evaluates its shard, counts are summed."""
        broadcast_buffers(self.model)  # every rank evaluates rank 0's running statistics
        kw = {"amp_dtype": self.amp_dtype, "channels_last": self.cfg.train.channels_last}
        row: dict[str, float] = {}
        if self.data.val is not None:
            row.update({f"val_{k}": v for k, v in evaluate(self.model, self.data.val, **kw).items()})
        row.update({f"test_{k}": v for k, v in evaluate(self.model, self.data.test, **kw).items()})
        return row

    # ------------------------------------------------------------------------------------
    def _micro_batches(self, loader) -> Iterator[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Groups of ``accum_steps`` batches; an incomplete last group is dropped."""
        group: list[tuple[torch.Tensor, torch.Tensor]] = []
        for images, labels in loader:
            if self.cfg.train.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            group.append((images, labels))
            if len(group) == self.accum_steps:
                yield group
                group = []

    def _check_finite(self, bad: torch.Tensor, epoch: int, first: int, last: int) -> None:
        """Raise if any loss since the last check was not finite, on this or any other rank.
        One host synchronisation (and, under DDP, one all-reduce) per call."""
        if any_rank_true(bad):
            steps = f"step {last}" if first == last else f"steps {first}-{last}"
            raise TrainingError(
                f"loss became non-finite at epoch {epoch + 1}, {steps} (on this or another rank)"
            )

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the training set. The host waits for the device only every
        ``train.check_every`` steps (finiteness check, progress bar) and at the epoch's end."""
        cfg, loader = self.cfg, self.data.train
        loader.set_epoch(epoch)
        self.objective.train()
        n_steps = self.steps_per_epoch
        check_every = cfg.train.check_every
        show = cfg.train.progress and self.info.is_main
        log_every = cfg.train.log_every if self.logger is not None else 0
        sums: dict[str, torch.Tensor] = {}
        correct = torch.zeros((), device=self.device)
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        seen, checked = 0, 0
        t0 = time.perf_counter()
        bar = tqdm(total=n_steps, desc=f"epoch {epoch + 1}/{self.epochs}", leave=False,
                   disable=not show, unit="step")
        for i, group in enumerate(self._micro_batches(loader)):
            self.objective.set_progress(epoch + i / n_steps, self.epochs)
            lr = self.optimizer.param_groups[0]["lr"]  # the LR of this step
            outs = accumulation_step(self.step_module, self.optimizer, self.scaler, group,
                                     self.amp_dtype)
            self.scheduler.step()
            if log_every and (epoch * n_steps + i + 1) % log_every == 0:
                self._log_step(epoch, epoch * n_steps + i + 1, outs, lr)
            for (_, labels), out in zip(group, outs):
                bs = labels.shape[0]
                seen += bs
                bad |= ~torch.isfinite(out["loss"].detach())
                for k, v in out.items():
                    if k != "logits":
                        sums[k] = sums.get(k, 0) + v.detach().float().to(self.device) * bs
                correct += topk_correct(out["logits"].detach(), labels, (1,))[0]
            if (i + 1) % check_every == 0 or i == n_steps - 1:
                self._check_finite(bad, epoch, checked, i)
                checked = i + 1
                if show:
                    rate = seen * self.info.world_size / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(loss=f"{outs[-1]['loss'].item():.3f}", img_s=f"{rate:.0f}")
            bar.update(1)
        bar.close()
        elapsed = time.perf_counter() - t0
        keys = sorted(sums)
        totals = torch.stack([sums[k] for k in keys] + [correct.float(),
                             torch.tensor(float(seen), device=self.device)])
        all_reduce_sum(totals)
        totals = totals.tolist()
        n = max(totals[-1], 1.0)
        row = {f"train_{k}": totals[j] / n for j, k in enumerate(keys)}
        row["train_top1"] = 100.0 * totals[-2] / n
        row["epoch_time_s"] = elapsed
        row["images_per_s"] = n / max(elapsed, 1e-9)
        return row

    def _log_step(self, epoch: int, step: int, outs: list[dict[str, torch.Tensor]],
                  lr: float) -> None:
        """One ``steps.jsonl``/TensorBoard row: the step's loss (mean over its micro-batches,
        this process's) and LR. One host synchronisation."""
        loss = torch.stack([o["loss"].detach().float() for o in outs]).mean().item()
        self.logger.log_step({"epoch": epoch + 1, "step": step, "loss": loss, "lr": lr})

    def fit(self) -> RunResult:
        cfg = self.cfg
        best_key = "val_top1" if self.data.val is not None else "test_top1"
        if self.logger is not None:
            self.logger.open_log()
        history = self.logger.read() if self.logger else []
        best = max((r.get(best_key, -1) for r in history), default=-1.0)
        train_time = sum(r.get("epoch_time_s", 0.0) for r in history)
        for epoch in range(self.start_epoch, self.epochs):
            row: dict[str, Any] = {"epoch": epoch + 1, "lr": self.optimizer.param_groups[0]["lr"]}
            try:
                row.update(self.train_epoch(epoch))
                if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == self.epochs:
                    row.update(self._evaluate())
            except TrainingError as e:
                hint = " or train without --amp fp16" if self.amp_dtype is torch.float16 else ""
                raise TrainingError(f"{e}; {self._kept(epoch)}; lower the learning rate (--lr)"
                                    f"{hint} and train again (--overwrite or a new --out)"
                                    ) from None
            except DataError as e:  # an image removed, made unreadable or damaged meanwhile
                again = "continue with --resume" if epoch else "train again"
                raise DataError(f"{e}; {self._kept(epoch)}; {again} (the data is scanned "
                                "again)") from e
            train_time += row["epoch_time_s"]
            is_best = row.get(best_key, -1) > best
            best = max(best, row.get(best_key, -1))
            history.append(row)
            failure: Exception | None = None
            try:
                self._checkpoint(epoch + 1, row, is_best)  # the row is logged once it is saved
                if self.logger is not None:
                    self.logger.log(row)
            except (CheckpointError, OSError) as e:
                failure = e
            # no rank runs ahead of rank 0's checkpoint, and all stop if rank 0 could not write
            if not all_true(failure is None, self.device):
                if failure is not None:
                    raise failure
                raise CheckpointError("rank 0 could not write the run directory (its message "
                                      "says why); continue with --resume once it is fixed")
            msg = (f"epoch {epoch + 1}/{self.epochs}  loss {row['train_loss']:.4f}  "
                   f"train {row['train_top1']:.2f}%")
            if "val_top1" in row:
                msg += f"  val {row['val_top1']:.2f}%"
            if "test_top1" in row:
                where = "test (val/)" if self.data.name == "imagefolder" else "test"
                msg += f"  {where} {row['test_top1']:.2f}%"
                if self.data.num_classes > 5:  # top-5 of 5 classes or fewer says nothing
                    msg += f" (top-5 {row['test_top5']:.2f}%)"
            msg += f"  {row['images_per_s']:.0f} img/s"
            self.say(msg)
        barrier()
        final = history[-1] if history else {}
        self.say(f"done: {self.run_dir}  test top-1 {final.get('test_top1', float('nan')):.2f}%"
                 f"  train time {train_time:.0f}s")
        if self.logger is not None:
            self.logger.close()
        return RunResult(self.run_dir, history, train_time, self.num_params)
