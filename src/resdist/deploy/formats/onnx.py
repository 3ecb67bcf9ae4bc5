"""ONNX: the format every runtime reads (ONNX Runtime here; OpenVINO reads it too).

The graph has one input ``"images"`` and one output ``"logits"``; the input contract is JSON in
``metadata_props["input_contract"]``. Opsets 18 and above come from torch's
``torch.export``-based exporter, 9..17 from the TorchScript-based one. INT8 is ONNX Runtime's
static quantiser (:mod:`resdist.deploy.quantize`), driven from a checkpoint by ``resdist export
--quantize int8``.
"""

from __future__ import annotations

import copy
import io
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from ...data.contract import InputContract
from ...models.fold import to_deploy
from .._onnx_graph import (
    activation_names,
    graph_inputs,
    infer_shapes,
    load_onnx,
    value_shapes,
    without_weights,
)
from ..errors import DeployError, require
from ..quiet import quiet
from ..runtime import cpu_session, session_runner
from . import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET
from .common import (
    CONTRACT_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportJob,
    FileInfo,
    Runner,
    Written,
    check_input_shape,
    contract_from_text,
    example_input,
    reference_outputs,
    relative_error,
    write_file,
)

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "check_graph_contract",
           "count_feature_adds", "export_onnx", "file_info", "load_runner", "onnx_opset",
           "read_contract", "save_onnx", "sniff", "verify_onnx", "write"]

DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 and above
TORCHSCRIPT_MAX_OPSET = 20  # the TorchScript-based exporter writes up to opset 20
Exporter = Literal["auto", "dynamo", "torchscript"]
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "torch.export")
INT8_OPS = ("QuantizeLinear", "QLinearConv")


def _check_opset(opset: int) -> None:
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise DeployError(
            f"ONNX opset {opset} is not supported: choose {MIN_OPSET}..{MAX_OPSET} "
            f"({DYNAMO_MIN_OPSET}..{MAX_OPSET} use the torch.export-based exporter, "
            f"{MIN_OPSET}..{DYNAMO_MIN_OPSET - 1} the TorchScript-based one)"
        )


def onnx_opset(onnx_model_or_path: Any) -> int:
    """The default-domain (``ai.onnx``) opset a written ONNX model declares."""
    model = load_onnx(onnx_model_or_path)
    versions = {o.domain: o.version for o in model.opset_import}
    return int(versions.get("", versions.get("ai.onnx", 0)))


def _strip_metadata(model: Any) -> None:
    """Drop per-node exporter metadata (stack traces with local paths, FX node dumps)."""
    for node in model.graph.node:
        del node.metadata_props[:]


def _export_dynamo(
    model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool
) -> Any:
    require("onnxscript")
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    with quiet(*_EXPORTER_LOGGERS):
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], opset_version=opset, dynamic_shapes=dynamic_shapes,
            optimize=True, verbose=False, external_data=False,
        )
    return program.model_proto


def _export_torchscript_based(
    model: nn.Module, example: torch.Tensor, opset: int, dynamic_batch: bool
) -> Any:
    onnx = require("onnx")
    buf = io.BytesIO()
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with quiet(*_EXPORTER_LOGGERS):
        torch.onnx.export(
            model, (example,), buf, dynamo=False, input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME], opset_version=opset, dynamic_axes=axes,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buf.getvalue())


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int],
    opset: int = DEFAULT_OPSET,
    dynamic_batch: bool = True,
    exporter: Exporter = "auto",
    deploy: bool = True,
    contract: InputContract | None = None,
    input_dtype: str = "float32",
) -> Path:
    """Fold ``model`` (:func:`to_deploy`) and write it as ONNX; returns the path.

    The graph has one input ``"images"`` of shape ``(N, C, H, W)`` and one output ``"logits"``;
    with ``dynamic_batch`` the batch dimension ``N`` is symbolic. Opsets 18 and above come from
    torch's ``torch.export``-based exporter (needs onnxscript; ``exporter="auto"`` falls back to
    the TorchScript-based one when it fails and the opset allows), opsets 9..17 from the
    TorchScript-based one; the written file declares exactly ``opset``, or
    :class:`DeployError` says why not. The written model passes ``onnx.checker.check_model``
    and, given ``contract``, records it in ``metadata_props["input_contract"]`` (JSON).
    ``deploy=False`` exports ``model`` as it is (in eval mode); ``input_dtype="uint8"`` for a
    model that takes uint8 images (:class:`Preprocessed`).
    """
    onnx = require("onnx")
    shape = check_input_shape(input_shape)
    _check_opset(opset)
    if exporter not in ("auto", "dynamo", "torchscript"):
        raise DeployError(f"exporter must be 'auto', 'dynamo' or 'torchscript', got {exporter!r}")
    if exporter == "dynamo" and opset < DYNAMO_MIN_OPSET:
        raise DeployError(f"the torch.export-based exporter writes opset {DYNAMO_MIN_OPSET} and "
                          f"above, not {opset}; use exporter='torchscript'")
    if exporter == "torchscript" and opset > TORCHSCRIPT_MAX_OPSET:
        raise DeployError(f"the TorchScript-based exporter writes opset {TORCHSCRIPT_MAX_OPSET} "
                          f"at most, not {opset}; use exporter='dynamo'")
    deployed = to_deploy(model) if deploy else copy.deepcopy(model).eval()
    deployed = deployed.float().cpu()
    example = example_input(2 if dynamic_batch else 1, shape, input_dtype)
    proto = None
    errors = []
    if exporter == "auto":
        exporter = "dynamo" if opset >= DYNAMO_MIN_OPSET else "torchscript"
    if exporter == "dynamo":
        try:
            proto = _export_dynamo(deployed, example, opset, dynamic_batch)
        except Exception as e:  # exporter failure: fall back or report
            if opset > TORCHSCRIPT_MAX_OPSET:
                raise DeployError(f"ONNX export (torch.export-based) failed: {e}") from e
            errors.append(e)
            warnings.warn(
                f"torch.export-based ONNX export failed ({type(e).__name__}: {e}); "
                "falling back to the TorchScript-based exporter", stacklevel=2,
            )
    if proto is None:
        try:
            proto = _export_torchscript_based(deployed, example, opset, dynamic_batch)
        except Exception as e:
            prior = f" (torch.export-based exporter: {errors[0]})" if errors else ""
            raise DeployError(f"ONNX export failed: {e}{prior}") from e
    _strip_metadata(proto)
    written = onnx_opset(proto)
    if written != opset:
        raise DeployError(f"the exporter wrote opset {written} instead of {opset}; "
                          f"choose --opset {written}")
    if contract is not None:
        onnx.helper.set_model_props(proto, {CONTRACT_KEY: contract.to_json()})
    try:
        onnx.checker.check_model(proto)
    except Exception as e:
        raise DeployError(f"exported ONNX model does not pass onnx.checker: {e}") from e
    return save_onnx(proto, path)


def save_onnx(proto: Any, path: str | os.PathLike) -> Path:
    """``onnx.save`` through :func:`write_file` (atomic)."""
    onnx = require("onnx")
    return write_file(path, lambda tmp: onnx.save(proto, os.fspath(tmp)), "ONNX file")


ONNX_DTYPES = {1: "float32", 2: "uint8"}  # TensorProto.FLOAT, TensorProto.UINT8


def check_graph_contract(proto: Any, contract: InputContract, path: Any = "the model") -> None:
    """Raise :class:`DeployError` unless the ONNX graph has one input of the contract's dtype
    and (where fixed) shape ``N x C x H x W``, and (where fixed) one logit per class name."""
    inputs = graph_inputs(proto)
    if len(inputs) != 1:
        raise DeployError(f"{path}: the graph has {len(inputs)} inputs, a resdist model one")
    shapes = value_shapes(proto)
    dims, elem = shapes[inputs[0].name]
    dtype = ONNX_DTYPES.get(elem, f"ONNX type {elem}")
    if dtype != contract.input_dtype:
        raise DeployError(f"{path}: the graph takes {dtype} input but its contract says "
                          f"{contract.input_dtype}; export it again")
    want = [None, *contract.input_shape]
    if dims is not None and (len(dims) != 4 or any(
            isinstance(d, int) and w is not None and d != w for d, w in zip(dims, want))):
        raise DeployError(f"{path}: the graph takes input {dims} but its contract says "
                          f"N x {' x '.join(map(str, contract.input_shape))}; export it again")
    out_dims = shapes.get(proto.graph.output[0].name, (None, 0))[0] if proto.graph.output \
        else None
    if out_dims and len(out_dims) == 2 and isinstance(out_dims[1], int) \
            and contract.class_names and out_dims[1] != len(contract.class_names):
        raise DeployError(f"{path}: the graph outputs {out_dims[1]} logits but its contract "
                          f"names {len(contract.class_names)} classes; export it again")


def count_feature_adds(onnx_model_or_path: Any) -> int:
    """Number of ``Add``/``Sum`` nodes adding two or more feature maps.

    A feature map is an activation (computed from the graph input, not an initializer or a
    constant such as a bias) of rank 4; an unknown rank counts as a feature map. For a ResNet
    this is one per residual block, for a plain student 0 (or one per kept projection shortcut).
    """
    model = infer_shapes(without_weights(load_onnx(onnx_model_or_path)))
    acts = activation_names(model)
    shapes = value_shapes(model)
    count = 0
    for node in model.graph.node:
        if node.op_type not in ("Add", "Sum"):
            continue
        feats = 0
        for name in node.input:
            dims = shapes.get(name, (None, 0))[0]
            if name in acts and (dims is None or len(dims) == 4):
                feats += 1
        count += feats >= 2
    return count


def verify_onnx(
    path: Any,
    model: nn.Module,
    input_shape: Sequence[int] | None = None,
    batch_sizes: Sequence[int] = (1, 3),
    seed: int = 0,
) -> float:
    """Run the ONNX model with ONNX Runtime on random inputs and compare it with ``model``.

    Returns the largest relative error ``max|ort - torch| / max|torch|`` over ``batch_sizes``
    (only the fixed batch size when the graph's batch dimension is not symbolic).
    ``input_shape`` defaults to the graph input's ``(C, H, W)``.
    """
    require("onnxruntime")  # a missing extra is said before any other work
    proto = load_onnx(path)
    inputs = graph_inputs(proto)
    if len(inputs) != 1 or not proto.graph.output:
        raise DeployError("verify_onnx expects a graph with one input and an output")
    in_name, out_name = inputs[0].name, proto.graph.output[0].name
    dims = value_shapes(proto)[in_name][0]
    if input_shape is None:
        if dims is None or not all(isinstance(d, int) for d in dims[1:]):
            raise DeployError("cannot read (C, H, W) from the ONNX graph; pass input_shape")
        input_shape = dims[1:]
    shape = check_input_shape(input_shape)
    if dims is not None and isinstance(dims[0], int):
        batch_sizes = (dims[0],)
    session = cpu_session(proto.SerializeToString())
    uint8 = inputs[0].type.tensor_type.elem_type == require("onnx").TensorProto.UINT8
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = example_input(b, shape, "uint8" if uint8 else "float32", gen)
        ref = reference_outputs(model, x)
        (out,) = session.run([out_name], {in_name: x.numpy()})
        worst = max(worst, relative_error(out, ref))
    return worst


def _onnx_inputs(path: Path) -> list[dict[str, Any]]:
    onnx = require("onnx")
    proto = load_onnx(path)
    shapes = value_shapes(proto)
    out = []
    for inp in graph_inputs(proto):
        dims = shapes.get(inp.name, (None, 0))[0]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(inp.type.tensor_type.elem_type)
        out.append({"name": inp.name, "shape": dims, "dtype": str(dtype)})
    return out




def read_contract(path: Path) -> InputContract | None:
    """The contract in an ONNX file's metadata, checked against its graph (None: none)."""
    proto = load_onnx(path)
    contract = contract_from_text(
        path, {p.key: p.value for p in proto.metadata_props}.get(CONTRACT_KEY))
    if contract is not None:
        check_graph_contract(proto, contract, path)
    return contract


def sniff(path: Path) -> bool:
    """Whether ``path`` holds an ONNX model (a graph with nodes); parsing runs no code."""
    onnx = require("onnx")
    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except PermissionError as e:
        raise DeployError(f"cannot read {path}: permission denied; make the file readable "
                          "(chmod a+r) or use a copy you may read") from e
    except Exception:
        return False
    return model.HasField("graph") and bool(model.graph.node) and model.ir_version >= 1


def file_info(path: Path) -> FileInfo:
    """Precision (INT8 when the graph quantises), recorded data set and fixed input shape."""
    from ..quantize.static import DATA_METADATA_KEY

    proto = load_onnx(path)
    props = {p.key: p.value for p in proto.metadata_props}
    int8 = any(n.op_type in INT8_OPS for n in proto.graph.node)
    shape = None
    inputs = graph_inputs(proto)
    if len(inputs) == 1:
        dims = value_shapes(proto)[inputs[0].name][0]
        if dims is not None and len(dims) == 4 and all(isinstance(d, int) for d in dims[1:]):
            shape = (int(dims[1]), int(dims[2]), int(dims[3]))
    return FileInfo("int8" if int8 else "fp32", props.get(DATA_METADATA_KEY) or None, shape)


def load_runner(path: Path, threads: int | None = None, trusted: bool = False) -> Runner:
    """ONNX Runtime on the CPU; a failure inside the runtime is one :class:`DeployError`."""
    del trusted  # an ONNX file runs no code of its own
    require("onnxruntime")
    return session_runner(cpu_session(path, threads), path)


def write(job: ExportJob) -> Written:
    """Export ``job`` as ONNX, read it back, count Adds and verify it with ONNX Runtime."""
    if job.int8:
        raise DeployError("ONNX INT8 export goes through ONNX Runtime's quantiser from a "
                          "checkpoint: resdist export --format onnx --quantize int8")
    path = export_onnx(job.deployed, job.out, job.input_shape, opset=job.opset, deploy=False,
                       contract=job.contract, input_dtype=job.input_dtype)
    adds = count_feature_adds(path)
    err = verify_onnx(path, job.reference, job.input_shape) if job.verify else None
    return Written(path, _onnx_inputs(path), onnx_opset(path), adds, err)
