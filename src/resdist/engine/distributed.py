"""torchrun/DDP helpers: process group set-up from the environment, rank queries, reductions,
buffer synchronisation and a SyncBatchNorm that also works on CPU (gloo).

Launch::

    torchrun --nproc-per-node 4 -m resdist train ...                     # one machine
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 8 \\
        --rdzv-backend c10d --rdzv-endpoint host0:29500 -m resdist train ...  # per node

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them (NCCL with one GPU per process on CUDA, gloo on CPU).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import ConfigError, check_device


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job (``world_size == 1``: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _wants_cuda(device: str) -> bool:
    if device == "auto":
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def cuda_index(local_rank: int, device_count: int) -> int:
    """The GPU a process with ``local_rank`` uses: GPU ``local_rank`` when the process sees all
    of its node's GPUs (torchrun), GPU 0 when it sees exactly one (launchers that give each
    process its own GPU, e.g. SLURM ``--gpus-per-task=1``)."""
    if device_count == 1:
        return 0
    if not 0 <= local_rank < device_count:
        raise ConfigError(
            f"LOCAL_RANK {local_rank} but this process sees {device_count} CUDA devices: start "
            "at most one process per GPU (torchrun --nproc-per-node), or give each process one GPU"
        )
    return local_rank


def init_distributed(device: str = "auto", timeout_min: float = 60.0) -> DistInfo:
    """Join the process group torchrun describes (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``).

    NCCL on CUDA (each process pinned to one GPU, see :func:`cuda_index`), gloo on CPU. Without
    those variables this is a no-op (single process). An existing group (the caller's, or one
    an earlier call created) is used as it is; a group created here is destroyed at exit.
    ``timeout_min`` bounds how long a collective waits for the other ranks; it must exceed the
    longest one-sided work (local rank 0 scanning ImageNet's 1.28M files or fetching weights
    while the others wait at a barrier); NCCL's own default is 10 minutes.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = _wants_cuda(device)
    if use_cuda:
        if not torch.cuda.is_available():
            raise ConfigError("train.device asks for CUDA but no CUDA device is available")
        torch.cuda.set_device(cuda_index(local, torch.cuda.device_count()))
    if not dist.is_initialized():
        timeout = timedelta(minutes=timeout_min)
        if use_cuda:
            dist.init_process_group(backend="nccl", timeout=timeout,
                                    device_id=torch.device("cuda", torch.cuda.current_device()))
        else:
            dist.init_process_group(backend="gloo", timeout=timeout)
        atexit.register(cleanup)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local)


def resolve_device(device: str, info: DistInfo, key: str = "train.device") -> torch.device:
    """``auto`` picks CUDA when present, else CPU. Distributed, a CUDA device is always this
    process's local GPU (``cuda:LOCAL_RANK``), whatever index ``device`` names. ``key`` is
    the setting's name in the error raised for a device that is not one, or not here."""
    check_device(key, device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key} asks for CUDA but no CUDA device is available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{key} asks for Apple's MPS but it is not available here")
    if dev.type == "cuda" and info.enabled:
        return torch.device("cuda", cuda_index(info.local_rank, torch.cuda.device_count()))
    return dev


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor across ranks in place (identity when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@contextmanager
def local_main_first() -> Iterator[None]:
    """Run the body on each node's ``LOCAL_RANK`` 0 first and on that node's other ranks after it.

    For first-time fetches (data set or weight downloads): one process per node downloads, the
    others then find the files. A no-op when not distributed. The barriers are reached even when
    the body raises, so the other ranks are released (and meet the same error themselves).
    """
    if not is_distributed():
        yield
        return
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not first:
        dist.barrier()
    try:
        yield
    finally:
        if first:
            dist.barrier()


def broadcast_buffers(module: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s BatchNorm buffers (running statistics) to every rank.

    The trainer's DDP does not broadcast buffers at every step (``broadcast_buffers=False``),
    so without sync-BN each rank's running statistics follow its own batches; call this before
    evaluating so all ranks (and the checkpoint rank 0 writes) evaluate the same network. Other
    buffers (constants such as Dirac identity kernels) are equal on every rank and not sent.
    """
    if not is_distributed():
        return
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for buf in m.buffers(recurse=False):
                dist.broadcast(buf, src)


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s picklable ``obj`` on every rank (identity when not distributed)."""
    if not is_distributed():
        return obj
    box = [obj if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src)
    return box[0]


def all_true(flag: bool, device: torch.device | str = "cpu") -> bool:
    """Whether ``flag`` holds on every rank (the collective runs on ``device``)."""
    if not is_distributed():
        return flag
    return not any_rank_true(torch.tensor(not flag, device=device))


def any_rank_true(flag: Tensor) -> bool:
    """Whether the boolean tensor ``flag`` is true on any rank: one all-reduce on ``flag``'s
    device and one host synchronisation (the only one; callers batch their checks)."""
    t = flag.reshape(1).to(torch.int32)
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return bool(t.item())


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------
class _GatherRows(torch.autograd.Function):
    """All-gather a 1-D tensor into ``(world_size, n)``; backward sums the gradients of all
    ranks and returns this rank's row (each rank's loss depends on every rank's row)."""

    @staticmethod
    def forward(ctx, local: Tensor) -> Tensor:  # type: ignore[override]
        ctx.rank = dist.get_rank()
        rows = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(rows, local.contiguous())
        return torch.stack(rows)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank]


class SyncBatchNorm2d(nn.BatchNorm2d):
    """A ``BatchNorm2d`` whose training statistics are computed over the global batch of all
    ranks, on CUDA and on CPU (gloo), where ``nn.SyncBatchNorm`` refuses to run.

    It stays a ``BatchNorm2d`` (BN folding and margin code that checks for one keeps working,
    and DDP accepts it on CPU). On CUDA it calls PyTorch's fused SyncBatchNorm kernels. On CPU
    each rank computes its per-channel mean and sum of squared deviations, the ranks all-gather
    them and combine them exactly (Chan et al.'s pairwise formula, no ``E[x^2] - E[x]^2``
    cancellation); gradients flow back through the gather, so a DDP step equals one BatchNorm
    over the global batch. Evaluation, and a single process, use the ordinary BatchNorm path.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and is_distributed()):
            return super().forward(input)
        self._check_input_dim(input)
        momentum = self.momentum
        if self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative moving average
                momentum = 1.0 / float(self.num_batches_tracked)
        momentum = 0.0 if momentum is None else momentum
        if input.device.type == "cuda":
            from torch.nn.modules._functions import SyncBatchNorm as _FusedSyncBN

            return _FusedSyncBN.apply(
                input, self.weight, self.bias, self.running_mean, self.running_var, self.eps,
                momentum, dist.group.WORLD, dist.get_world_size(),
            )
        return self._gathered_forward(input, momentum)

    def _gathered_forward(self, x: Tensor, momentum: float) -> Tensor:
        c = x.shape[1]
        dims = [0, 2, 3]
        shape = [1, c, 1, 1]
        xf = x.float()
        mean = xf.mean(dims)
        m2 = (xf - mean.view(shape)).pow(2).sum(dims)
        local = torch.cat([mean, m2, mean.new_full((1,), float(xf.numel() // c))])
        rows = _GatherRows.apply(local)
        means, m2s, counts = rows[:, :c], rows[:, c : 2 * c], rows[:, 2 * c :]
        total = counts.sum()
        g_mean = (counts * means).sum(0) / total
        g_m2 = (m2s + counts * (means - g_mean).pow(2)).sum(0)
        if self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                unbiased = g_m2 / (total - 1).clamp_min(1)
                self.running_mean.lerp_(g_mean.to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = (xf - g_mean.view(shape)) * torch.rsqrt(g_m2 / total + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every trainable ``BatchNorm2d`` in ``module`` by :class:`SyncBatchNorm2d`.

    BatchNorm layers whose parameters are all frozen (a frozen teacher, which runs in eval mode
    on running statistics) are left alone. Parameters and buffers are carried over as they are
    (same tensors, same state-dict names). Returns ``module`` (or its replacement when
    ``module`` itself is such a BatchNorm).
    """

    def convert(bn: nn.BatchNorm2d) -> nn.Module:
        params = list(bn.parameters(recurse=False))
        if type(bn) is not nn.BatchNorm2d or (params and not any(p.requires_grad for p in params)):
            return bn
        new = SyncBatchNorm2d(bn.num_features, bn.eps, bn.momentum, bn.affine,
                              bn.track_running_stats, device="meta")
        new.weight, new.bias = bn.weight, bn.bias
        new.running_mean, new.running_var = bn.running_mean, bn.running_var
        new.num_batches_tracked = bn.num_batches_tracked
        new.train(bn.training)
        return new

    if isinstance(module, nn.BatchNorm2d):
        return convert(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, convert(child))
    return module
