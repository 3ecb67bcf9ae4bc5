"""What removing shortcuts buys at inference: activation memory, bytes moved, MACs, latency.

Memory figures come from a liveness pass over the exported ONNX graph (:func:`analyze_onnx`);
latency from ONNX Runtime on the CPU (:func:`measure_latency`); :func:`profile_models` measures
ResNets and their plain counterparts side by side and :func:`write_profile_report` writes
JSON, a PNG chart and a markdown table (METHOD.md section 7).

Liveness conventions (an idealised sequential NCHW executor, close to ONNX Runtime's CPU
allocation planner; not a replay of ORT's exact plan):

* Nodes run one after another in the graph's (topological) order.
* A tensor is allocated when produced and freed after its last consumer has run; while a node
  runs, its inputs and its outputs are live. The graph input is live from the start and freed
  after its last consumer; graph outputs stay live to the end. Weights (initializers, constants
  and anything computed only from them) are not activations and are not counted.
* Fusion: an activation (``Relu``, ``Clip``, ``LeakyRelu``, ``Sigmoid``, ``Tanh``,
  ``HardSigmoid``) whose input is a ``Conv`` output used by nothing else runs fused into that
  ``Conv`` (ORT's ConvActivationFusion): one step, the intermediate is never stored.
* In place: an elementwise node (``Relu``, ``Add``, ``Sum``, ``Mul``, ...) writes its output into
  the buffer of an input of the same size whose last use is that node (ORT's buffer reuse for
  "may-inplace" kernels); the graph input is user-owned and never reused.
* Aliases: ``Reshape``, ``Flatten``, ``Squeeze``, ``Unsqueeze``, ``Identity`` share their input's
  buffer and move no bytes.
* Bytes moved: for every step, the bytes of its activation inputs (read) plus its activation
  outputs (written); weights are excluded. MACs count ``Conv``, ``Gemm`` and ``MatMul``.

With these rules a width-16 thin CIFAR block at 32x32 (fp32) peaks at 2 feature maps (128 KiB)
in a plain network and at 3 (192 KiB: block input + two conv outputs) in a ResNet, and ImageNet
ResNet-50 vs plain-50 at 224x224 peak at 6.9 vs 4.6 MiB per image (METHOD.md section 7).

A second, more favourable view of ResNets is available (``analyze_onnx(..., fuse_add=True)``,
reported by :func:`profile_models` under ``fused_add``): an executor that fuses the shortcut
``Add`` (and its ReLU) into the preceding ``Conv`` and accumulates into the shortcut's buffer,
as ONNX Runtime's NCHWc kernels do on x86. Then a thin ResNet block also peaks at two feature
maps, and only the bytes-moved saving remains.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import os
import platform
import tempfile
import time
import weakref
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._onnx_graph import (
    FLOAT_TYPES,
    METADATA_OPS,
    activation_names,
    graph_inputs,
    infer_shapes,
    load_onnx,
    value_shapes,
    without_weights,
)
from .errors import DeployError, require
from .export import count_feature_adds, export_onnx, load_model_source
from .fuse import calibrate_bn, to_deploy

__all__ = [
    "GraphProfile", "analyze_onnx", "format_table", "measure_latency", "memory_cross_check",
    "merge_profiles", "profile_models", "torch_activation_peak", "write_profile_report",
]

FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"})
INPLACE_OPS = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Neg", "Abs", "Exp", "Sqrt", "Add", "Sum", "Sub", "Mul", "Div",
})
ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})


@dataclass
class GraphProfile:
    """Liveness and traffic figures of one ONNX graph at one batch size (bytes, MACs)."""

    batch_size: int
    peak_activation_bytes: int
    peak_step: str
    input_bytes: int
    output_bytes: int
    bytes_read: int
    bytes_written: int
    macs: int
    parameters: int
    num_steps: int
    live_bytes: list[int] = field(default_factory=list, repr=False)

    @property
    def bytes_moved(self) -> int:
        """Feature-map bytes read plus written over the whole forward pass."""
        return self.bytes_read + self.bytes_written

    def as_dict(self, timeline: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d["bytes_moved"] = self.bytes_moved
        if not timeline:
            d.pop("live_bytes")
        return d


def _with_batch(model: Any, batch_size: int) -> Any:
    """Copy of ``model`` whose graph inputs have batch ``batch_size``, shapes re-inferred.

    Float initializers keep their dims but lose their data (see :func:`without_weights`)."""
    m = without_weights(model)
    del m.graph.value_info[:]
    for vi in graph_inputs(m):
        dims = vi.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch_size
    for vi in m.graph.output:
        vi.type.tensor_type.ClearField("shape")
    return infer_shapes(m)


def _nbytes(dims: list | None, elem_type: int, name: str) -> int:
    onnx = require("onnx")
    if dims is None or not all(isinstance(d, int) for d in dims):
        raise DeployError(f"cannot size tensor {name!r}: shape {dims} is not fully known")
    itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    return int(math.prod(dims)) * itemsize


def _node_macs(node: Any, shapes: Mapping[str, tuple]) -> int:
    def dims(name: str) -> list:
        d = shapes.get(name, (None, 0))[0]
        if d is None or not all(isinstance(v, int) for v in d):
            raise DeployError(f"cannot count MACs of {node.op_type} {node.name!r}: shape of {name!r} unknown")
        return d

    if node.op_type == "Conv":
        w = dims(node.input[1])
        return math.prod(dims(node.output[0])) * math.prod(w[1:])
    if node.op_type == "Gemm":
        a = dims(node.input[0])
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return math.prod(dims(node.output[0])) * k
    if node.op_type == "MatMul":
        return math.prod(dims(node.output[0])) * dims(node.input[0])[-1]
    return 0


def _count_parameters(model: Any) -> int:
    n = sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in FLOAT_TYPES)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for at in node.attribute:
                if at.name == "value" and at.t.data_type in FLOAT_TYPES:
                    n += math.prod(at.t.dims)
    return n


def analyze_onnx(
    onnx_model_or_path: Any,
    batch_size: int = 1,
    fuse_activations: bool = True,
    inplace_ops: Iterable[str] | None = INPLACE_OPS,
    fuse_add: bool = False,
) -> GraphProfile:
    """Peak live activation bytes, feature-map bytes moved, MACs and parameters of a graph.

    Follows the conventions in this module's docstring. ``batch_size`` replaces the graph's
    (symbolic or fixed) batch dimension before shape inference. ``fuse_activations=False``
    runs every activation as its own step; ``inplace_ops`` is the set of op types that may
    reuse a dying input buffer (``None`` or empty: nothing runs in place).

    ``fuse_add=True`` models an executor that fuses a shortcut ``Add`` (and a following
    activation) into the ``Conv`` producing its later operand, accumulating into the other
    operand's buffer when that dies there and ``"Add"`` is in ``inplace_ops`` (as ONNX
    Runtime's NCHWc convolution with a ``Sum`` input does on x86). It is a second, more favourable view of ResNets: the Add costs no
    extra step, traffic is one read of the shortcut, and the block's peak can drop to two
    feature maps.
    """
    if batch_size < 1:
        raise DeployError(f"batch_size must be >= 1, got {batch_size}")
    original = load_onnx(onnx_model_or_path)
    parameters = _count_parameters(original)
    model = _with_batch(original, batch_size)
    inplace = frozenset(inplace_ops or ())
    nodes = list(model.graph.node)
    acts = activation_names(model)
    shapes = value_shapes(model)
    outputs = {o.name for o in model.graph.output}
    inputs = [i.name for i in graph_inputs(model)]

    def size(name: str) -> int:
        dims, et = shapes.get(name, (None, 1))
        return _nbytes(dims, et, name)

    # -- group nodes into steps (Conv + activation fusion) --------------------------------
    consumers: dict[str, list[int]] = defaultdict(list)
    producer: dict[str, int] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            if name:
                consumers[name].append(i)
        for name in node.output:
            producer[name] = i
    steps: list[list[int]] = []
    step_of: dict[int, int] = {}

    def fusable_into(src: str, i: int) -> int | None:
        """Step that node ``i`` can join: the Conv step producing ``src``, used only by ``i``."""
        p = producer.get(src)
        if p is None or consumers[src] != [i] or src in outputs:
            return None
        step = steps[step_of[p]]
        if nodes[step[0]].op_type != "Conv" or step[-1] != p:
            return None
        if any(nodes[k].op_type in FUSED_ACTIVATIONS for k in step):
            return None
        return step_of[p]

    for i, node in enumerate(nodes):
        target = None
        if fuse_activations and node.op_type in FUSED_ACTIVATIONS and node.input:
            target = fusable_into(node.input[0], i)
        elif (
            fuse_add and node.op_type in ("Add", "Sum") and len(node.input) == 2
            and all(n in acts and n in producer for n in node.input)
        ):
            later = max(node.input, key=lambda n: step_of[producer[n]])
            target = fusable_into(later, i)
            if target is not None and len(steps[target]) != 1:
                target = None
        if target is None:
            step_of[i] = len(steps)
            steps.append([i])
        else:
            step_of[i] = target
            steps[target].append(i)

    # external activation inputs / outputs of each step
    step_in: list[list[str]] = []
    step_out: list[list[str]] = []
    for members in steps:
        made = {o for i in members for o in nodes[i].output}
        ins: list[str] = []
        for i in members:
            if nodes[i].op_type in METADATA_OPS:
                continue
            ins += [n for n in nodes[i].input if n in acts and n not in made and n not in ins]
        outs = [
            o for i in members for o in nodes[i].output
            if o in acts and (o in outputs or any(step_of[c] != step_of[i] for c in consumers[o]))
        ]
        step_in.append(ins)
        step_out.append(outs)

    n_steps = len(steps)
    last_use: dict[str, int] = {}
    for s, ins in enumerate(step_in):
        for name in ins:
            last_use[name] = s
    for name in outputs:
        last_use[name] = n_steps - 1

    # -- buffers -----------------------------------------------------------------------------
    buf_of: dict[str, int] = {}
    buf_size: list[int] = []
    buf_alloc: list[int] = []
    buf_members: list[list[str]] = []
    buf_owned: list[bool] = []  # user-owned (graph input): never reused in place

    def new_buffer(name: str, step: int, owned: bool = False) -> None:
        buf_of[name] = len(buf_size)
        buf_size.append(size(name))
        buf_alloc.append(step)
        buf_members.append([name])
        buf_owned.append(owned)

    def buffer_last_use(b: int) -> int:
        return max(last_use.get(t, buf_alloc[b]) for t in buf_members[b])

    for name in inputs:
        new_buffer(name, -1, owned=True)
    bytes_read = bytes_written = macs = 0
    for s, members in enumerate(steps):
        for i in members:
            macs += _node_macs(nodes[i], shapes)
        op = nodes[members[0]].op_type if len(members) == 1 else None
        if op in ALIAS_OPS and step_in[s]:
            for o in step_out[s]:
                buf_of[o] = buf_of[step_in[s][0]]
                buf_members[buf_of[o]].append(o)
            continue
        bytes_read += sum(size(n) for n in step_in[s])
        # inputs whose buffer the output may take over
        if op in inplace:
            candidates = step_in[s]
        else:  # a Conv with a fused Add accumulates into the Add's other operand
            adds = [k for k in members[1:] if nodes[k].op_type in ("Add", "Sum")]
            candidates = (
                [n for n in nodes[adds[0]].input if n in step_in[s]]
                if adds and "Add" in inplace else []
            )
        reused: set[int] = set()
        for o in step_out[s]:
            bytes_written += size(o)
            target = None
            if candidates:
                for n in candidates:
                    b = buf_of[n]
                    if (
                        not buf_owned[b] and b not in reused and buf_size[b] == size(o)
                        and buffer_last_use(b) == s
                    ):
                        target = b
                        break
            if target is None:
                new_buffer(o, s)
            else:
                reused.add(target)
                buf_of[o] = target
                buf_members[target].append(o)

    # -- live bytes per step -----------------------------------------------------------------
    live = [0] * n_steps
    for b in range(len(buf_size)):
        end = buffer_last_use(b)
        for s in range(max(buf_alloc[b], 0), end + 1):
            live[s] += buf_size[b]
    input_bytes = sum(size(n) for n in inputs)
    peak = max([input_bytes, *live])
    peak_at = live.index(peak) if peak in live else -1
    peak_step = (
        "+".join(nodes[i].name or nodes[i].op_type for i in steps[peak_at])
        if peak_at >= 0 else "<graph input>"
    )
    return GraphProfile(
        batch_size=batch_size,
        peak_activation_bytes=peak,
        peak_step=peak_step,
        input_bytes=input_bytes,
        output_bytes=sum(size(n) for n in outputs),
        bytes_read=bytes_read,
        bytes_written=bytes_written,
        macs=macs,
        parameters=parameters,
        num_steps=n_steps,
        live_bytes=live,
    )


# --- a second opinion: real allocations in PyTorch ------------------------------------------

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


# --- latency ----------------------------------------------------------------------------------

def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _session(path: Any, threads: int, spin: bool) -> Any:
    ort = require("onnxruntime")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3
    return ort.InferenceSession(os.fspath(path), so, providers=["CPUExecutionProvider"])


def _summary(times_s: list[float], batch: int) -> dict[str, Any]:
    ms = np.asarray(times_s) * 1e3
    med = float(np.median(ms))
    return {
        "median_ms": med,
        "p10_ms": float(np.percentile(ms, 10)),
        "p90_ms": float(np.percentile(ms, 90)),
        "mean_ms": float(ms.mean()),
        "min_ms": float(ms.min()),
        "per_image_ms": med / batch,
        "runs": len(ms),
    }


def measure_latency(
    onnx_paths: Mapping[str, Any],
    input_shapes: Mapping[str, Sequence[int]] | Sequence[int],
    batch_sizes: Sequence[int] = (1, 8, 32),
    threads: Sequence[int | None] = (1, None),
    runs: int | Mapping[int, int] = 20,
    warmup: int = 2,
    min_runs: int = 3,
    max_seconds: float | None = None,
    spin: bool = False,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """ONNX Runtime CPU latency of several models, measured side by side.

    For each thread count (``None``: all cores) one session per model is created
    (``ORT_SEQUENTIAL``, all graph optimisations, denormals as zero, ``intra_op_num_threads``
    as given); for each batch size every model is warmed up, then the models are run in turn,
    one run each per round (order reversed every other round), so that a change in machine
    load hits all of them alike. Rounds stop after ``runs`` (per batch size if a mapping), or after ``max_seconds`` once every model
    has ``min_runs``. ``spin=False`` disables ORT's thread spinning so idle sessions do not
    steal cores from the one being timed. Returns one record per (model, threads, batch) with
    median, p10, p90, mean, min (milliseconds per batch) and the number of runs.
    """
    if isinstance(input_shapes, Mapping):
        shapes = {k: tuple(v) for k, v in input_shapes.items()}
    else:
        shapes = {k: tuple(input_shapes) for k in onnx_paths}
    cores = available_cores()
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    for t in threads:
        n_threads = cores if t is None or t <= 0 else int(t)
        sessions = {name: _session(p, n_threads, spin) for name, p in onnx_paths.items()}
        for b in batch_sizes:
            n_runs = runs.get(b, min_runs) if isinstance(runs, Mapping) else runs
            feeds = {
                name: {sess.get_inputs()[0].name:
                       rng.standard_normal((b, *shapes[name])).astype(np.float32)}
                for name, sess in sessions.items()
            }
            for name, sess in sessions.items():
                for _ in range(warmup):
                    sess.run(None, feeds[name])
            times: dict[str, list[float]] = {name: [] for name in sessions}
            start = time.perf_counter()
            order = list(sessions.items())
            for r in range(max(n_runs, 1)):
                for name, sess in order if r % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    sess.run(None, feeds[name])
                    times[name].append(time.perf_counter() - t0)
                if (
                    max_seconds is not None and r + 1 >= min_runs
                    and time.perf_counter() - start > max_seconds
                ):
                    break
            for name in sessions:
                rec = {"model": name, "threads": n_threads, "batch": b}
                rec.update(_summary(times[name], b))
                records.append(rec)
            if log:
                log(f"  latency threads={n_threads} batch={b}: {len(times[next(iter(times))])} "
                    f"rounds in {time.perf_counter() - start:.1f} s")
        del sessions
    return records


# --- side-by-side profile ---------------------------------------------------------------------

def _is_checkpoint_path(spec: Any) -> bool:
    if isinstance(spec, os.PathLike):
        return True
    return isinstance(spec, str) and (
        os.path.exists(spec) or spec.endswith((".pth", ".pt", ".ckpt")) or os.sep in spec
    )


def _resolve_model(
    spec: Any, index: int, input_shape: Sequence[int] | None, model_kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    from ..models import create_model, is_model

    if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], nn.Module):
        label, model = spec
        return {"name": str(label), "arch": str(label), "model": model, "source": "module",
                "input_shape": input_shape, "registry": False}
    if isinstance(spec, nn.Module):
        name = f"{type(spec).__name__}#{index}"
        return {"name": name, "arch": name, "model": spec, "source": "module",
                "input_shape": input_shape, "registry": False}
    if isinstance(spec, str) and is_model(spec):
        model = create_model(spec, **dict(model_kwargs))
        return {"name": spec, "arch": spec, "model": model, "source": "registry",
                "input_shape": input_shape, "registry": True}
    if _is_checkpoint_path(spec):
        model, shape, arch = load_model_source(spec)
        label = f"{arch} ({Path(spec).name})"
        return {"name": label, "arch": arch, "model": model, "source": f"checkpoint {spec}",
                "input_shape": shape or input_shape, "registry": False}
    from ..models import UnknownModelError, list_models

    raise UnknownModelError(
        f"{spec!r} is neither a registered model nor a checkpoint file. "
        f"Valid names: {', '.join(list_models())}"
    )


def _pair_models(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    """(plain index, resnet index): plainN with resnetN by name, else the last ResNet given."""
    from ..models import teacher_name_for

    pairs = []
    for i, rec in enumerate(records):
        if rec["is_resnet"]:
            continue
        want = teacher_name_for(rec["arch"])
        match = [j for j, r in enumerate(records) if r["is_resnet"] and r["arch"] == want]
        if not match:
            before = [j for j, r in enumerate(records[:i]) if r["is_resnet"]]
            match = before or [j for j, r in enumerate(records) if r["is_resnet"]]
        if match:
            pairs.append((i, match[-1]))
    return pairs


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else a / b


def _compute_pairs(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for i, j in _pair_models(records):
        plain, res = records[i], records[j]
        lat_plain = {(r["threads"], r["batch"]): r["median_ms"] for r in plain["latency"]}
        lat_res = {(r["threads"], r["batch"]): r["median_ms"] for r in res["latency"]}
        out.append({
            "plain": plain["name"],
            "resnet": res["name"],
            "peak_ratio": _ratio(res["peak_activation_bytes_per_image"],
                                 plain["peak_activation_bytes_per_image"]),
            "bytes_moved_ratio": _ratio(res["bytes_moved_per_image"],
                                        plain["bytes_moved_per_image"]),
            "macs_ratio": _ratio(res["macs_per_image"], plain["macs_per_image"]),
            "peak_ratio_fused_add": _ratio(
                res["fused_add"]["peak_activation_bytes_per_image"],
                plain["fused_add"]["peak_activation_bytes_per_image"],
            ),
            "bytes_moved_ratio_fused_add": _ratio(
                res["fused_add"]["bytes_moved_per_image"],
                plain["fused_add"]["bytes_moved_per_image"],
            ),
            "latency_ratio": [
                {"threads": k[0], "batch": k[1], "ratio": _ratio(lat_res[k], lat_plain[k])}
                for k in lat_plain if k in lat_res
            ],
        })
    return out


def _environment() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    env = {
        "cpu": cpu,
        "cores": available_cores(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
    }
    for mod in ("onnx", "onnxruntime"):
        with contextlib.suppress(ImportError):
            env[mod] = __import__(mod).__version__
    with contextlib.suppress(OSError, AttributeError):
        env["loadavg_start"] = [round(v, 2) for v in os.getloadavg()]
    return env


def profile_models(
    models: Sequence[Any],
    input_shape: Sequence[int] = (3, 32, 32),
    batch_sizes: Sequence[int] = (1, 8, 32),
    threads: Sequence[int | None] = (1, None),
    runs: int | Mapping[int, int] = 20,
    warmup: int = 2,
    min_runs: int = 3,
    max_seconds: float | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    calibrate: bool | None = None,
    calibration_batches: int = 2,
    calibration_batch_size: int = 16,
    memory_check: bool = True,
    latency: bool = True,
    onnx_dir: str | os.PathLike | None = None,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Profile several models side by side: memory, bytes moved, MACs, ORT latency, ratios.

    Args:
        models: registry names (``"resnet56"``, built with ``model_kwargs``), checkpoint paths
            (their stored ``input_shape`` wins), modules, or ``(label, module)`` pairs.
        input_shape: ``(C, H, W)`` of one image.
        batch_sizes, threads, runs, warmup, min_runs, max_seconds: see :func:`measure_latency`.
        calibrate: re-estimate BatchNorm statistics from Gaussian inputs before folding
            (:func:`calibrate_bn`); ``None`` does it for registry models (random weights) only.
        memory_check: add :func:`memory_cross_check` at batch 1 for each model.
        latency: ``False`` skips timing (memory/MAC figures only).
        onnx_dir: keep the exported graphs there (default: a temporary folder).
        log: called with progress lines.

    Denormals are flushed while this runs (``torch.set_flush_denormal(True)``, switched off
    again at the end; ORT sessions set ``session.set_denormal_as_zero``). Registry models are
    built here; given modules are not modified.

    Returns:
        ``{"meta": ..., "models": [...], "pairs": [...]}``; every ratio is ResNet / plain, so a
        value above 1 is what the plain network saves.
    """
    if not models:
        raise DeployError("profile_models needs at least one model")
    require("onnx")
    if latency:
        require("onnxruntime")
    kwargs = dict(model_kwargs or {})
    log = log or (lambda _msg: None)
    torch.set_flush_denormal(True)
    try:
        return _profile_models(
            models, input_shape, batch_sizes, threads, runs, warmup, min_runs, max_seconds,
            kwargs, calibrate, calibration_batches, calibration_batch_size, memory_check,
            latency, onnx_dir, seed, log,
        )
    finally:
        torch.set_flush_denormal(False)


def _profile_models(
    models: Sequence[Any],
    input_shape: Sequence[int],
    batch_sizes: Sequence[int],
    threads: Sequence[int | None],
    runs: int | Mapping[int, int],
    warmup: int,
    min_runs: int,
    max_seconds: float | None,
    kwargs: dict[str, Any],
    calibrate: bool | None,
    calibration_batches: int,
    calibration_batch_size: int,
    memory_check: bool,
    latency: bool,
    onnx_dir: str | os.PathLike | None,
    seed: int,
    log: Callable[[str], None],
) -> dict[str, Any]:
    meta = _environment()
    meta.update({
        "batch_sizes": list(batch_sizes),
        "threads": [available_cores() if t is None or t <= 0 else int(t) for t in threads],
        "runs": dict(runs) if isinstance(runs, Mapping) else runs,
        "warmup": warmup, "min_runs": min_runs, "max_seconds": max_seconds,
        "model_kwargs": kwargs,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "denormals": "flushed (torch.set_flush_denormal, ORT session.set_denormal_as_zero)",
        "ort_session": "CPUExecutionProvider, ORT_SEQUENTIAL, ORT_ENABLE_ALL, "
                       "intra_op_num_threads as listed, spinning off",
        "memory_convention": "liveness over the exported ONNX graph, sequential topological "
                             "order, Conv+activation fused, elementwise ops in place, fp32",
        "ratios": "ResNet / plain (above 1: the plain network is cheaper)",
    })
    with contextlib.ExitStack() as stack:
        if onnx_dir is None:
            onnx_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="resdist-profile-"))
        onnx_dir = Path(onnx_dir)
        onnx_dir.mkdir(parents=True, exist_ok=True)
        records: list[dict[str, Any]] = []
        paths: dict[str, Path] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for idx, spec in enumerate(models):
            info = _resolve_model(spec, idx, input_shape, kwargs)
            name = info["name"]
            if name in paths:
                name = info["name"] = f"{name}#{idx}"
            shape = tuple(int(s) for s in info["input_shape"])
            model = info["model"]
            do_cal = info["registry"] if calibrate is None else calibrate
            t0 = time.perf_counter()
            if do_cal and info["source"] == "module":
                model = copy.deepcopy(model)  # leave the caller's BatchNorm statistics alone
            if do_cal:
                calibrate_bn(model, calibration_batches, shape, calibration_batch_size, seed=seed)
                weights = (f"random init, BN statistics calibrated on {calibration_batches}x"
                           f"{calibration_batch_size} Gaussian images")
            else:
                weights = "as given" if info["source"] == "module" else "trained (checkpoint)"
            deployed = to_deploy(model)
            path = export_onnx(deployed, onnx_dir / f"{idx:02d}.onnx", shape, deploy=False)
            paths[name], shapes[name] = path, shape
            proto = load_onnx(path)
            mem = [analyze_onnx(proto, b) for b in sorted({1, *batch_sizes})]
            one = mem[0]
            acc = analyze_onnx(proto, 1, fuse_add=True)
            rec: dict[str, Any] = {
                "name": name,
                "arch": info["arch"],
                "source": info["source"],
                "weights": weights,
                "input_shape": list(shape),
                "onnx_file": path.name,  # under onnx_dir (INT8 profiling quantises it)
                "is_resnet": bool(getattr(model, "shortcuts", False)),
                "parameters": sum(p.numel() for p in deployed.parameters()),
                "macs_per_image": one.macs,
                "feature_adds": count_feature_adds(proto),
                "expected_shortcut_adds": (
                    model.count_shortcut_adds() if hasattr(model, "count_shortcut_adds") else None
                ),
                "peak_activation_bytes_per_image": one.peak_activation_bytes,
                "bytes_moved_per_image": one.bytes_moved,
                "bytes_read_per_image": one.bytes_read,
                "bytes_written_per_image": one.bytes_written,
                "peak_step": one.peak_step,
                "fused_add": {
                    "peak_activation_bytes_per_image": acc.peak_activation_bytes,
                    "bytes_moved_per_image": acc.bytes_moved,
                },
                "memory": [
                    {"batch": g.batch_size, "peak_activation_bytes": g.peak_activation_bytes,
                     "bytes_moved": g.bytes_moved} for g in mem
                ],
                "latency": [],
            }
            if not hasattr(model, "shortcuts"):
                rec["is_resnet"] = rec["feature_adds"] > 0
            if memory_check:
                rec["memory_check"] = memory_cross_check(deployed, shape, proto, 1, deploy=False)
            records.append(rec)
            log(f"{name}: exported and analysed in {time.perf_counter() - t0:.1f} s "
                f"(peak {one.peak_activation_bytes / 2**10:.0f} KiB/image, "
                f"{rec['feature_adds']} feature Adds)")
        if latency:
            lat = measure_latency(
                paths, shapes, batch_sizes, threads, runs, warmup, min_runs, max_seconds,
                seed=seed, log=log,
            )
            by_name = {r["name"]: r for r in records}
            for r in lat:
                by_name[r.pop("model")]["latency"].append(r)
    with contextlib.suppress(OSError, AttributeError):
        meta["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    return {"meta": meta, "models": records, "pairs": _compute_pairs(records)}


def merge_profiles(results: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One result from several :func:`profile_models` runs (e.g. CIFAR and ImageNet shapes).

    ``meta`` is taken from the first run, with each run's ``loadavg``/``date`` kept under
    ``runs``."""
    if not results:
        raise DeployError("merge_profiles needs at least one result")
    meta = dict(results[0]["meta"])
    meta["runs_meta"] = [
        {k: r["meta"].get(k) for k in ("date", "loadavg_start", "loadavg_end")} for r in results
    ]
    return {
        "meta": meta,
        "models": [m for r in results for m in r["models"]],
        "pairs": [p for r in results for p in r["pairs"]],
    }


# --- reports ------------------------------------------------------------------------------

def _fmt_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit != "KiB" else f"{n / scale:.0f} {unit}"
    return f"{int(n)} B"


def _fmt_count(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(int(n))


def _fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}x"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def _settings(result: Mapping[str, Any]) -> list[tuple[int, int]]:
    seen: list[tuple[int, int]] = []
    for m in result["models"]:
        for r in m["latency"]:
            key = (r["threads"], r["batch"])
            if key not in seen:
                seen.append(key)
    return sorted(seen)


def format_table(result: Mapping[str, Any]) -> str:
    """Markdown tables (aligned, readable on a console): memory/compute per model, latency
    per model and setting, and the ResNet/plain ratios of each pair."""
    mem_rows = []
    for m in result["models"]:
        adds = str(m["feature_adds"])
        if m.get("expected_shortcut_adds") not in (None, m["feature_adds"]):
            adds += f" (expected {m['expected_shortcut_adds']})"
        mem_rows.append([
            m["name"], "x".join(map(str, m["input_shape"])), _fmt_count(m["parameters"]),
            _fmt_count(m["macs_per_image"]), adds,
            _fmt_bytes(m["peak_activation_bytes_per_image"]),
            _fmt_bytes(m["bytes_moved_per_image"]),
        ])
    parts = [_table(
        ["model", "input", "params", "MACs/img", "feature Adds", "peak act./img",
         "bytes moved/img"], mem_rows,
    )]
    settings = _settings(result)
    if settings:
        lat_rows = []
        for m in result["models"]:
            by = {(r["threads"], r["batch"]): r for r in m["latency"]}
            row = [m["name"]]
            for k in settings:
                r = by.get(k)
                row.append("-" if r is None else
                           f"{r['median_ms']:.2f} [{r['p10_ms']:.2f}-{r['p90_ms']:.2f}] n={r['runs']}")
            lat_rows.append(row)
        parts.append(_table(
            ["ORT latency, ms per batch: median [p10-p90]"] + [f"t={t} b={b}" for t, b in settings],
            lat_rows,
        ))
    if result.get("pairs"):
        pair_rows = []
        for p in result["pairs"]:
            by = {(r["threads"], r["batch"]): r["ratio"] for r in p["latency_ratio"]}
            pair_rows.append([
                f"{p['resnet']} / {p['plain']}", _fmt_ratio(p.get("macs_ratio")),
                _fmt_ratio(p["peak_ratio"]), _fmt_ratio(p["bytes_moved_ratio"]),
                f"{_fmt_ratio(p.get('peak_ratio_fused_add'))} / "
                f"{_fmt_ratio(p.get('bytes_moved_ratio_fused_add'))}",
                *(_fmt_ratio(by.get(k)) for k in settings),
            ])
        parts.append(_table(
            ["ResNet / plain", "MACs", "peak act.", "bytes moved", "peak / bytes, Conv+Add fused"]
            + [f"latency t={t} b={b}" for t, b in settings], pair_rows,
        ))
    return "\n\n".join(parts)


def _plot(result: Mapping[str, Any], path: Path) -> None:
    matplotlib = require("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = result["models"]
    names = [m["name"] for m in models]
    colors = ["tab:red" if m["is_resnet"] else "tab:blue" for m in models]
    n_panels = 3 if result.get("pairs") and _settings(result) else 2
    fig, axes = plt.subplots(1, n_panels, figsize=(5.5 * n_panels, 4.8))
    for ax, key, title in (
        (axes[0], "peak_activation_bytes_per_image", "Peak live activations per image (MiB)"),
        (axes[1], "bytes_moved_per_image", "Feature-map bytes moved per image (MiB)"),
    ):
        vals = [m[key] / 2**20 for m in models]
        bars = ax.bar(range(len(models)), vals, color=colors)
        ax.bar_label(bars, labels=[_fmt_bytes(m[key]) for m in models], fontsize=6,
                     rotation=90, padding=2)
        ax.set_xticks(range(len(models)), names, rotation=60, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylim(min(vals) / 2, max(vals) * 6)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    if n_panels == 3:
        ax = axes[2]
        settings = _settings(result)
        pairs = result["pairs"]
        width = 0.8 / max(len(settings), 1)
        all_vals: list[float] = []
        for k, (t, b) in enumerate(settings):
            vals = []
            for p in pairs:
                by = {(r["threads"], r["batch"]): r["ratio"] for r in p["latency_ratio"]}
                vals.append(by.get((t, b)) or np.nan)
            ax.bar(np.arange(len(pairs)) + k * width - 0.4 + width / 2, vals, width,
                   label=f"threads={t}, batch={b}")
            all_vals += [v for v in vals if np.isfinite(v)]
        ax.axhline(1.0, color="k", lw=0.8)
        if all_vals:
            ax.set_ylim(min(0.9, min(all_vals) - 0.05), max(all_vals) + 0.15)
        ax.set_xticks(range(len(pairs)), [p["plain"] for p in pairs], rotation=60, ha="right",
                      fontsize=8)
        ax.set_title("ORT latency ratio ResNet / plain", fontsize=10)
        ax.legend(fontsize=6, ncol=2, loc="upper left")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("ResNet (red) vs plain (blue): fp32, sequential liveness over the ONNX graph",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_profile_report(
    result: Mapping[str, Any], out_dir: str | os.PathLike, name: str = "profile"
) -> str:
    """Write ``<name>.json``, ``<name>.png`` and ``<name>.md`` under ``out_dir``; returns the
    markdown (tables plus the command, machine and versions recorded in ``result["meta"]``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    _plot(result, out / f"{name}.png")
    meta = result.get("meta", {})
    lines = [f"# Deploy profile: ResNet vs plain ({meta.get('date', '')})", ""]
    if meta.get("command"):
        lines += ["Produced by:", "", f"    {meta['command']}", ""]
    lines += [
        f"- CPU: {meta.get('cpu', '?')} ({meta.get('cores', '?')} cores available); "
        f"ORT threads: {', '.join(map(str, meta.get('threads', [])))}",
        f"- torch {meta.get('torch', '?')}, onnxruntime {meta.get('onnxruntime', '?')}, "
        f"onnx {meta.get('onnx', '?')}, Python {meta.get('python', '?')}",
        f"- ORT session: {meta.get('ort_session', '')}; denormals {meta.get('denormals', '')}",
        f"- Memory: {meta.get('memory_convention', '')}",
        f"- Ratios: {meta.get('ratios', '')}",
    ]
    weights = sorted({m["weights"] for m in result["models"]})
    lines.append(f"- Weights: {'; '.join(weights)}")
    if "loadavg_start" in meta:
        lines.append(f"- Load average (1/5/15 min) at start {meta['loadavg_start']}, "
                     f"end {meta.get('loadavg_end')}; other processes may have shared the CPU")
    if meta.get("note"):
        lines.append(f"- Note: {meta['note']}")
    if meta.get("highlights"):
        lines += ["", "Highlights:", "", *(f"- {h}" for h in meta["highlights"])]
    lines += ["", format_table(result), "", f"![chart]({name}.png)", ""]
    checks = [m for m in result["models"] if m.get("memory_check")]
    if checks:
        lines += ["Cross-check of the liveness figure against PyTorch's own allocations "
                  "(torch.fx + dispatch tracking, batch 1; PyTorch's `+` is not in place):", ""]
        rows = []
        for m in checks:
            c = m["memory_check"]
            rows.append([m["name"], _fmt_bytes(c.get("liveness_peak_bytes")),
                         _fmt_bytes(c.get("liveness_peak_bytes_torch_rules")),
                         _fmt_bytes(c.get("measured_peak_bytes")), c.get("reason") or ""])
        lines += [_table(["model", "liveness (ours)", "liveness (torch rules)",
                          "PyTorch measured", "note"], rows), ""]
    md = "\n".join(lines)
    (out / f"{name}.md").write_text(md)
    return md
