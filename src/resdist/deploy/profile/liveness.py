"""Peak live activation memory, feature-map bytes moved and MACs of an ONNX graph.

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
ResNet-50 vs plain-50 at 224x224 peak at 6.9 vs 4.6 MiB per image (docs/method.md section 7).

A second, more favourable view of ResNets is available (``analyze_onnx(..., fuse_add=True)``,
reported by :func:`profile_models` under ``fused_add``): an executor that fuses the shortcut
``Add`` (and its ReLU) into the preceding ``Conv`` and accumulates into the shortcut's buffer,
as ONNX Runtime's NCHWc kernels do on x86. Then a thin ResNet block also peaks at two feature
maps, and only the bytes-moved saving remains.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .._onnx_graph import (
    FLOAT_TYPES,
    METADATA_OPS,
    activation_names,
    graph_inputs,
    infer_shapes,
    load_onnx,
    value_shapes,
    without_weights,
)
from ..errors import DeployError, require

FUSED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "Tanh", "HardSigmoid"})
INPLACE_OPS = frozenset({
    "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "Elu", "Selu",
    "Neg", "Abs", "Exp", "Sqrt", "Add", "Sum", "Sub", "Mul", "Div",
})
ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
_ADDS = ("Add", "Sum")


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


class _Graph:
    """The nodes of a batch-fixed graph with who produces and who consumes each tensor."""

    def __init__(self, model: Any) -> None:
        self.nodes = list(model.graph.node)
        self.acts = activation_names(model)
        self.shapes = value_shapes(model)
        self.outputs = {o.name for o in model.graph.output}
        self.inputs = [i.name for i in graph_inputs(model)]
        self.consumers: dict[str, list[int]] = defaultdict(list)
        self.producer: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in node.input:
                if name:
                    self.consumers[name].append(i)
            for name in node.output:
                self.producer[name] = i

    def size(self, name: str) -> int:
        dims, et = self.shapes.get(name, (None, 1))
        return _nbytes(dims, et, name)


@dataclass
class _Steps:
    """Nodes grouped into execution steps, with each step's external activation inputs and
    outputs and the step at which each activation is last used."""

    members: list[list[int]]
    step_of: dict[int, int]
    inputs: list[list[str]] = field(default_factory=list)
    outputs: list[list[str]] = field(default_factory=list)
    last_use: dict[str, int] = field(default_factory=dict)


def _group_steps(g: _Graph, fuse_activations: bool, fuse_add: bool) -> _Steps:
    """One step per node, except activations (and with ``fuse_add`` shortcut Adds) that join
    the single-use Conv step producing their input."""
    steps = _Steps(members=[], step_of={})

    def fusable_into(src: str, i: int) -> int | None:
        """Step that node ``i`` can join: the Conv step producing ``src``, used only by ``i``."""
        p = g.producer.get(src)
        if p is None or g.consumers[src] != [i] or src in g.outputs:
            return None
        step = steps.members[steps.step_of[p]]
        if g.nodes[step[0]].op_type != "Conv" or step[-1] != p:
            return None
        if any(g.nodes[k].op_type in FUSED_ACTIVATIONS for k in step):
            return None
        return steps.step_of[p]

    for i, node in enumerate(g.nodes):
        target = None
        if fuse_activations and node.op_type in FUSED_ACTIVATIONS and node.input:
            target = fusable_into(node.input[0], i)
        elif (
            fuse_add and node.op_type in _ADDS and len(node.input) == 2
            and all(n in g.acts and n in g.producer for n in node.input)
        ):
            later = max(node.input, key=lambda n: steps.step_of[g.producer[n]])
            target = fusable_into(later, i)
            if target is not None and len(steps.members[target]) != 1:
                target = None
        if target is None:
            steps.step_of[i] = len(steps.members)
            steps.members.append([i])
        else:
            steps.step_of[i] = target
            steps.members[target].append(i)
    return steps


def _add_boundaries(g: _Graph, steps: _Steps) -> None:
    """Fill in the activations each step reads from and writes for other steps, and last uses
    (graph outputs live to the end)."""
    for members in steps.members:
        made = {o for i in members for o in g.nodes[i].output}
        ins: list[str] = []
        for i in members:
            if g.nodes[i].op_type in METADATA_OPS:
                continue
            ins += [n for n in g.nodes[i].input if n in g.acts and n not in made and n not in ins]
        outs = [
            o for i in members for o in g.nodes[i].output
            if o in g.acts and (
                o in g.outputs or any(steps.step_of[c] != steps.step_of[i] for c in g.consumers[o])
            )
        ]
        steps.inputs.append(ins)
        steps.outputs.append(outs)
    for s, ins in enumerate(steps.inputs):
        for name in ins:
            steps.last_use[name] = s
    for name in g.outputs:
        steps.last_use[name] = len(steps.members) - 1


class _Buffers:
    """Activation buffers: size, step allocated, tensors stored in them, user-owned or not."""

    def __init__(self, last_use: Mapping[str, int]) -> None:
        self.last_use = last_use
        self.of: dict[str, int] = {}
        self.size: list[int] = []
        self.alloc: list[int] = []
        self.members: list[list[str]] = []
        self.owned: list[bool] = []  # user-owned (graph input): never reused in place

    def new(self, name: str, nbytes: int, step: int, owned: bool = False) -> None:
        self.of[name] = len(self.size)
        self.size.append(nbytes)
        self.alloc.append(step)
        self.members.append([name])
        self.owned.append(owned)

    def share(self, name: str, buffer: int) -> None:
        self.of[name] = buffer
        self.members[buffer].append(name)

    def last_step(self, b: int) -> int:
        return max(self.last_use.get(t, self.alloc[b]) for t in self.members[b])

    def reusable(self, name: str, nbytes: int, step: int, taken: set[int]) -> bool:
        """Whether the output of ``step`` may take over the buffer holding ``name``."""
        b = self.of[name]
        return (not self.owned[b] and b not in taken and self.size[b] == nbytes
                and self.last_step(b) == step)

    def live_bytes(self, n_steps: int) -> list[int]:
        live = [0] * n_steps
        for b in range(len(self.size)):
            for s in range(max(self.alloc[b], 0), self.last_step(b) + 1):
                live[s] += self.size[b]
        return live


def _inplace_candidates(g: _Graph, steps: _Steps, s: int, op: str | None,
                        inplace: frozenset[str]) -> list[str]:
    """Inputs of step ``s`` whose buffer its output may take over."""
    if op in inplace:
        return steps.inputs[s]
    # a Conv with a fused Add accumulates into the Add's other operand
    adds = [k for k in steps.members[s][1:] if g.nodes[k].op_type in _ADDS]
    if adds and "Add" in inplace:
        return [n for n in g.nodes[adds[0]].input if n in steps.inputs[s]]
    return []


@dataclass
class _Traffic:
    bytes_read: int = 0
    bytes_written: int = 0
    macs: int = 0


def _run_steps(g: _Graph, steps: _Steps, inplace: frozenset[str]) -> tuple[_Buffers, _Traffic]:
    """Walk the steps in order, assigning every activation a buffer; count traffic and MACs."""
    buffers = _Buffers(steps.last_use)
    traffic = _Traffic()
    for name in g.inputs:
        buffers.new(name, g.size(name), -1, owned=True)
    for s, members in enumerate(steps.members):
        for i in members:
            traffic.macs += _node_macs(g.nodes[i], g.shapes)
        op = g.nodes[members[0]].op_type if len(members) == 1 else None
        if op in ALIAS_OPS and steps.inputs[s]:
            for o in steps.outputs[s]:
                buffers.share(o, buffers.of[steps.inputs[s][0]])
            continue
        traffic.bytes_read += sum(g.size(n) for n in steps.inputs[s])
        candidates = _inplace_candidates(g, steps, s, op, inplace)
        taken: set[int] = set()
        for o in steps.outputs[s]:
            nbytes = g.size(o)
            traffic.bytes_written += nbytes
            reuse = next((n for n in candidates if buffers.reusable(n, nbytes, s, taken)), None)
            if reuse is None:
                buffers.new(o, nbytes, s)
            else:
                taken.add(buffers.of[reuse])
                buffers.share(o, buffers.of[reuse])
    return buffers, traffic


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
    Runtime's NCHWc convolution with a ``Sum`` input does on x86). It is a second, more
    favourable view of ResNets: the Add costs no extra step, traffic is one read of the
    shortcut, and the block's peak can drop to two feature maps.
    """
    if batch_size < 1:
        raise DeployError(f"batch_size must be >= 1, got {batch_size}")
    original = load_onnx(onnx_model_or_path)
    g = _Graph(_with_batch(original, batch_size))
    steps = _group_steps(g, fuse_activations, fuse_add)
    _add_boundaries(g, steps)
    buffers, traffic = _run_steps(g, steps, frozenset(inplace_ops or ()))
    live = buffers.live_bytes(len(steps.members))
    input_bytes = sum(g.size(n) for n in g.inputs)
    peak = max([input_bytes, *live])
    peak_at = live.index(peak) if peak in live else -1
    peak_step = (
        "+".join(g.nodes[i].name or g.nodes[i].op_type for i in steps.members[peak_at])
        if peak_at >= 0 else "<graph input>"
    )
    return GraphProfile(
        batch_size=batch_size,
        peak_activation_bytes=peak,
        peak_step=peak_step,
        input_bytes=input_bytes,
        output_bytes=sum(g.size(n) for n in g.outputs),
        bytes_read=traffic.bytes_read,
        bytes_written=traffic.bytes_written,
        macs=traffic.macs,
        parameters=_count_parameters(original),
        num_steps=len(steps.members),
        live_bytes=live,
    )
