"""A second opinion on the liveness figure: the activation storages PyTorch really allocates.

The model is traced with ``torch.fx`` and run under a dispatch mode that records every op's
output storage until it is freed. This uses ``torch.utils._python_dispatch`` (a private torch
module; the same mode powers torch's own ``FlopCounterMode``), so the check is best effort.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ...models.fold import to_deploy
from .._onnx_graph import load_onnx
from ..errors import DeployError
from .liveness import analyze_onnx


class _ActivationTracker(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts bytes of tensor storages produced by ops and alive at the same time."""

    def __init__(self, ignore: set[int]) -> None:
        super().__init__()
        self.ignore = ignore
        self.refs: dict[int, int] = {}
        self.sizes: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _release(self, ptr: int) -> None:
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.current -= self.sizes.pop(ptr)
            del self.refs[ptr]

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr == 0 or ptr in self.ignore:
            return
        if ptr not in self.refs:
            self.refs[ptr] = 0
            self.sizes[ptr] = storage.nbytes()
            self.current += self.sizes[ptr]
            self.peak = max(self.peak, self.current)
        self.refs[ptr] += 1
        weakref.finalize(t, self._release, ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        out = func(*args, **(kwargs or {}))
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out


class _CopyInput(nn.Module):
    """Makes the graph input an op output, so the traced graph frees it after its last use."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.clone())


def torch_activation_peak(
    model: nn.Module, input_shape: Sequence[int], batch_size: int = 1, deploy: bool = True
) -> int:
    """Peak bytes of activation storages alive at once when PyTorch runs ``model``.

    The (deployed) model is traced with ``torch.fx``, whose generated code drops every value
    after its last use, and run under a dispatch mode that records each op's output storage
    until it is freed. Weights and the caller's input tensor are not counted (a copy of the
    input is). PyTorch's ReLU(inplace=True) runs in place; its ``+`` does not.
    """
    net = to_deploy(model) if deploy else model.eval()
    try:
        gm = torch.fx.symbolic_trace(_CopyInput(net))
    except Exception as e:
        raise DeployError(f"torch.fx cannot trace {type(model).__name__}: {e}") from e
    ignore = {p.untyped_storage().data_ptr() for p in gm.parameters()}
    ignore |= {b.untyped_storage().data_ptr() for b in gm.buffers()}
    x = torch.randn(batch_size, *input_shape)
    with torch.no_grad():
        gm(x)  # warm-up: lazy initialisations allocate outside the measurement
        tracker = _ActivationTracker(ignore)
        with tracker:
            out = gm(x)
        del out
    return tracker.peak


def memory_cross_check(
    model: nn.Module,
    input_shape: Sequence[int],
    onnx_model_or_path: Any,
    batch_size: int = 1,
    deploy: bool = True,
) -> dict[str, Any]:
    """Compare the liveness figure with PyTorch's own allocations (best effort).

    ``model`` is folded first unless ``deploy=False`` (it already is).

    Returns ``measured_peak_bytes`` (:func:`torch_activation_peak`), ``liveness_peak_bytes``
    (our convention), ``liveness_peak_bytes_torch_rules`` (the same pass with only ``Relu``
    in place and no fusion, i.e. PyTorch's eager behaviour, which should match the measurement
    exactly) and their differences; on failure the figures are ``None`` and ``reason`` says why
    (it also explains a known extra, PyTorch's max-pool indices).
    ONNX Runtime's Python API exposes no allocation statistics, so it is not used here.
    """
    result: dict[str, Any] = {
        "method": "torch.fx trace + dispatch-mode allocation tracking (CPU)",
        "batch_size": batch_size,
        "measured_peak_bytes": None,
        "liveness_peak_bytes": None,
        "liveness_peak_bytes_torch_rules": None,
        "reason": None,
    }
    try:
        ours = analyze_onnx(onnx_model_or_path, batch_size)
        torch_rules = analyze_onnx(
            onnx_model_or_path, batch_size, fuse_activations=False, inplace_ops={"Relu"}
        )
        measured = torch_activation_peak(model, input_shape, batch_size, deploy=deploy)
    except Exception as e:  # best effort: report, do not fail the profile
        result["reason"] = f"{type(e).__name__}: {e}"
        return result
    extra = measured - torch_rules.peak_activation_bytes
    if extra > 0 and any(n.op_type == "MaxPool" for n in load_onnx(onnx_model_or_path).graph.node):
        result["reason"] = (
            "PyTorch's CPU max_pool2d also keeps int64 indices (not in the ONNX graph)"
        )
    result.update(
        measured_peak_bytes=measured,
        liveness_peak_bytes=ours.peak_activation_bytes,
        liveness_peak_bytes_torch_rules=torch_rules.peak_activation_bytes,
        difference_bytes=measured - ours.peak_activation_bytes,
        difference_torch_rules_bytes=measured - torch_rules.peak_activation_bytes,
    )
    return result


def largest_activation_bytes(model: nn.Module, input_shape: Sequence[int]) -> int:
    """Bytes of the largest tensor ``model`` takes or produces for one fp32 image of shape
    ``input_shape`` (C, H, W), counted on PyTorch's ``meta`` device: nothing is allocated. A
    lower bound of what a forward pass needs; where the model cannot run on ``meta``, the
    input's size alone."""
    sizes = [4 * math.prod(int(d) for d in input_shape)]

    def hook(_module: nn.Module, _inputs: Any, out: Any) -> None:
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel() * out.element_size())

    leaves = [m for m in model.modules() if next(m.children(), None) is None]
    handles = [m.register_forward_hook(hook) for m in leaves]
    state = {k: torch.empty_like(v, device="meta")
             for k, v in (*model.named_parameters(), *model.named_buffers())}
    try:
        with torch.no_grad():
            torch.func.functional_call(model, state,
                                       (torch.empty((1, *input_shape), device="meta"),))
    except Exception:  # noqa: BLE001 - best effort: the input's size is still a bound
        pass
    finally:
        for h in handles:
            h.remove()
    return max(sizes)
