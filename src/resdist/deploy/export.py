"""Export the deploy form of a network to ONNX or TorchScript, and check the result.

The exported graph of a plain student has no elementwise ``Add`` between feature maps
(docs/method.md section 7); :func:`count_feature_adds` counts them so tests and reports can show
it. Exported files carry the model's input contract (:mod:`resdist.data.contract`): ONNX in
``metadata_props["input_contract"]`` (JSON), TorchScript in the extra file
``input_contract.json``; :func:`with_preprocessing` bakes the normalisation into the graph.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import itertools
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from ..atomic import atomic_path, write_failure
from ..data.contract import InputContract
from ..data.errors import DataError
from ..models.fold import to_deploy
from ..safe_load import load_torchscript
from ._onnx_graph import (
    activation_names,
    graph_inputs,
    infer_shapes,
    load_onnx,
    value_shapes,
    without_weights,
)
from .errors import DeployError, require
from .quiet import quiet
from .runtime import cpu_session

__all__ = [
    "CONTRACT_KEY", "DEFAULT_OPSET", "ExportReport", "INPUT_NAME", "MAX_OPSET", "MIN_OPSET", "OUTPUT_NAME",
    "Preprocessed", "count_feature_adds", "count_torchscript_feature_adds", "export",
    "export_onnx", "export_torchscript", "load_model_source", "onnx_opset", "read_contract",
    "verify_onnx", "verify_torchscript", "with_preprocessing",
]

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter writes opset 18 and above
TORCHSCRIPT_MAX_OPSET = 20  # the TorchScript-based exporter writes up to opset 20
MIN_OPSET, MAX_OPSET = 9, 23
CONTRACT_KEY = "input_contract"  # ONNX metadata_props key (JSON) and TorchScript extra file stem
Exporter = Literal["auto", "dynamo", "torchscript"]
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "torch.export")


class Preprocessed(nn.Module):
    """``model`` behind its input normalisation: takes images scaled to [0, 1] (float32) or raw
    0..255 pixels (uint8) and computes ``model((x / 255 if uint8 - mean) / std)``.

    The normalisation is one multiply-add per pixel (``x * scale + shift``), exported as such.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float],
                 input_dtype: str = "float32") -> None:
        super().__init__()
        if input_dtype not in ("float32", "uint8"):
            raise DeployError(f"input dtype must be float32 or uint8, got {input_dtype!r}")
        mean_t = torch.tensor([float(m) for m in mean]).view(1, -1, 1, 1)
        std_t = torch.tensor([float(s) for s in std]).view(1, -1, 1, 1)
        pixel = 255.0 if input_dtype == "uint8" else 1.0
        self.register_buffer("scale", 1.0 / (pixel * std_t))
        self.register_buffer("shift", -mean_t / std_t)
        self.input_dtype = input_dtype
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(torch.float32) * self.scale + self.shift)


def with_preprocessing(
    model: nn.Module, contract: InputContract, input_dtype: str = "float32"
) -> tuple[Preprocessed, InputContract]:
    """``model`` with ``contract``'s normalisation inside, and the contract of the result."""
    if contract.normalized_inside:
        raise DeployError("this model already normalises its input")
    wrapped = Preprocessed(model, contract.mean, contract.std, input_dtype).eval()
    baked = dataclasses.replace(contract, normalized_inside=True, input_dtype=input_dtype)
    return wrapped, baked


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


def _check_input_shape(input_shape: Sequence[int] | None) -> tuple[int, int, int]:
    if input_shape is None:
        raise DeployError("input_shape (C, H, W) is required to export a model")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise DeployError(f"input_shape must be three positive ints (C, H, W), got {input_shape}")
    return shape  # type: ignore[return-value]


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
    shape = _check_input_shape(input_shape)
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
    example = _example_input(2 if dynamic_batch else 1, shape, input_dtype)
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


def write_file(path: str | os.PathLike, write: Callable[[Path], Any], what: str) -> Path:
    """Write an export atomically: ``write(tmp)`` fills a temporary file beside ``path``, which
    then replaces ``path`` (:func:`resdist.atomic.atomic_path`). A full disk or any other write
    failure leaves an existing ``path`` as it was and no partial file, and is one
    :class:`DeployError` line."""
    path = Path(path)
    existed = path.is_file()
    try:
        with atomic_path(path) as tmp:
            write(tmp)
    except Exception as e:
        reason = write_failure(e)
        if reason is None:
            raise
        kept = "the previous file is kept" if existed else "no file was written"
        raise DeployError(f"cannot write the {what} {path}: {reason}; {kept}") from e
    return path


def save_onnx(proto: Any, path: str | os.PathLike) -> Path:
    """``onnx.save`` through :func:`write_file` (atomic)."""
    onnx = require("onnx")
    return write_file(path, lambda tmp: onnx.save(proto, os.fspath(tmp)), "ONNX file")


def _example_input(batch: int, shape: Sequence[int], input_dtype: str,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    if input_dtype == "uint8":
        return torch.randint(0, 256, (batch, *shape), dtype=torch.uint8, generator=generator)
    return torch.randn((batch, *shape), generator=generator)


def read_contract(path: str | os.PathLike) -> InputContract | None:
    """The input contract an exported ONNX or TorchScript file records (None if it has none).

    Read without running anything (a TorchScript archive's zip directory only) and checked
    field by field; for ONNX the graph's input (type, fixed dims) and output class count must
    agree with it.

    Raises:
        DeployError: the contract is malformed, or the ONNX graph does not take what it says.
    """
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"model file not found: {path}")
    proto = None
    if path.suffix.lower() == ".onnx":
        proto = load_onnx(path)
        text = {p.key: p.value for p in proto.metadata_props}.get(CONTRACT_KEY)
    else:  # read from the archive's zip directory: loading the module would run its code
        from ..safe_load import is_torchscript, torchscript_extra_file

        if not is_torchscript(path):
            raise DeployError(f"{path} is neither an ONNX nor a TorchScript file")
        text = torchscript_extra_file(path, f"{CONTRACT_KEY}.json")
    if not text:
        return None
    try:
        contract = InputContract.from_json(text if isinstance(text, str) else text.decode())
    except DataError as e:
        raise DeployError(f"{path}: {e}") from e
    if proto is not None:
        check_graph_contract(proto, contract, path)
    return contract


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


def _first_output(out: Any) -> torch.Tensor:
    if isinstance(out, (tuple, list)):
        out = out[0]
    if isinstance(out, dict):
        out = next(iter(out.values()))
    return out


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(itertools.chain(model.parameters(), model.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


def _reference_outputs(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    """``model(x)`` in eval mode, fp32 on the host; ``x`` goes to the model's device (a model
    trained on CUDA is compared where it lives)."""
    device = _model_device(model)
    if device.type == "meta":
        raise DeployError("the model's weights are on the meta device (no data): load them first")
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return _first_output(model(x.to(device))).float().cpu().numpy()
    finally:
        model.train(was_training)


def _relative_error(out: np.ndarray, ref: np.ndarray) -> float:
    if out.shape != ref.shape:
        raise DeployError(f"output shape {out.shape} differs from the model's {ref.shape}")
    scale = max(float(np.abs(ref).max()), 1e-12)
    return float(np.abs(out.astype(np.float64) - ref.astype(np.float64)).max() / scale)


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
    shape = _check_input_shape(input_shape)
    if dims is not None and isinstance(dims[0], int):
        batch_sizes = (dims[0],)
    session = cpu_session(proto.SerializeToString())
    uint8 = inputs[0].type.tensor_type.elem_type == require("onnx").TensorProto.UINT8
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = _example_input(b, shape, "uint8" if uint8 else "float32", gen)
        ref = _reference_outputs(model, x)
        (out,) = session.run([out_name], {in_name: x.numpy()})
        worst = max(worst, _relative_error(out, ref))
    return worst


def export_torchscript(
    model: nn.Module,
    path: str | os.PathLike,
    input_shape: Sequence[int],
    deploy: bool = True,
    contract: InputContract | None = None,
    input_dtype: str = "float32",
) -> Path:
    """Fold ``model`` and save it as TorchScript (``torch.jit.trace``, then ``torch.jit.save``).

    The traced module accepts any batch size. ``contract`` is saved as the extra file
    ``input_contract.json`` (:func:`read_contract` reads it from the archive without loading it).
    ``torch.jit`` is deprecated upstream in favour of ``torch.export`` but remains the format
    C++/mobile runtimes load; its warnings are silenced.
    """
    shape = _check_input_shape(input_shape)
    deployed = to_deploy(model) if deploy else copy.deepcopy(model).eval()
    deployed = deployed.float().cpu()
    example = _example_input(2, shape, input_dtype)
    extra = {f"{CONTRACT_KEY}.json": contract.to_json()} if contract is not None else {}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(deployed, example)
            path = write_file(path, lambda tmp: _jit_save(traced, tmp, extra),
                              "TorchScript file")
    except DeployError:
        raise
    except Exception as e:
        raise DeployError(f"TorchScript export failed: {e}") from e
    return path


def _jit_save(module: Any, path: Path, extra: dict[str, str]) -> None:
    """``torch.jit.save`` through a Python file, so that a full disk is an ``OSError``."""
    with open(path, "wb") as f:
        torch.jit.save(module, f, _extra_files=extra)


def _load_torchscript(module_or_path: Any) -> Any:
    """A TorchScript module, or the file at a path loaded with ``torch.jit.load``, which runs the
    code the file carries: resdist calls it only on the file it has just exported."""
    if isinstance(module_or_path, (str, os.PathLike)):
        if not os.path.isfile(module_or_path):
            raise DeployError(f"TorchScript file not found: {module_or_path}")
        return load_torchscript(module_or_path, trusted=True, what="")  # our own export
    return module_or_path


def count_torchscript_feature_adds(module_or_path: Any) -> int:
    """Number of ``aten::add`` nodes in a traced module adding two computed tensors (neither a
    constant nor a parameter): the shortcut additions. A path is loaded, which runs its code:
    pass only files you exported yourself."""
    module = _load_torchscript(module_or_path)
    skip = {"prim::Constant", "prim::GetAttr"}
    count = 0
    for node in module.inlined_graph.nodes():
        if node.kind() not in ("aten::add", "aten::add_"):
            continue
        ins = list(node.inputs())[:2]
        if all(i.type().kind() == "TensorType" and i.node().kind() not in skip for i in ins):
            count += 1
    return count


def verify_torchscript(
    module_or_path: Any,
    model: nn.Module,
    input_shape: Sequence[int],
    batch_sizes: Sequence[int] = (1, 3),
    seed: int = 0,
    input_dtype: str = "float32",
) -> float:
    """Largest relative error between a saved TorchScript module and ``model`` on random inputs
    (of ``input_dtype``). A path is loaded, which runs its code: pass only files you exported
    yourself."""
    module = _load_torchscript(module_or_path)
    shape = _check_input_shape(input_shape)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = _example_input(b, shape, input_dtype, gen)
        ref = _reference_outputs(model, x)
        with torch.no_grad():
            out = _first_output(module(x)).float().numpy()
        worst = max(worst, _relative_error(out, ref))
    return worst


def load_model_source(
    checkpoint_or_model: Any, input_shape: Sequence[int] | None = None, *,
    with_contract: bool = False,
) -> tuple[Any, ...]:
    """``(model, input_shape, name)`` from a checkpoint (a path or a loaded
    :class:`~resdist.engine.checkpoint.Checkpoint`) or a module, and its input contract as a
    fourth item with ``with_contract`` (None for a module, or a checkpoint that records none).

    A checkpoint's network is rebuilt with ``Checkpoint.build_model`` and its recorded input
    shape is used unless one is given (the contract then follows the given shape).
    """
    from ..engine.checkpoint import Checkpoint, load_checkpoint

    if isinstance(checkpoint_or_model, nn.Module):
        name = type(checkpoint_or_model).__name__
        shape = _check_input_shape(input_shape) if input_shape is not None else None
        found: tuple[Any, ...] = (checkpoint_or_model, shape, name, None)
        return found if with_contract else found[:3]
    if not isinstance(checkpoint_or_model, (str, os.PathLike, Checkpoint)):
        raise DeployError(
            f"expected a checkpoint path or an nn.Module, got {type(checkpoint_or_model).__name__}"
        )
    ckpt = checkpoint_or_model if isinstance(checkpoint_or_model, Checkpoint) else \
        load_checkpoint(checkpoint_or_model)
    model = ckpt.build_model()
    shape = input_shape if input_shape is not None else ckpt.input_shape
    shape = _check_input_shape(shape) if shape is not None else None
    contract = ckpt.contract  # None: neither recorded nor derivable; exported without one
    if contract is not None and shape is not None and list(shape) != contract.input_shape:
        contract = dataclasses.replace(contract, input_shape=list(shape))
    found = (model, shape, ckpt.model_name, contract)
    return found if with_contract else found[:3]


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


@dataclasses.dataclass
class ExportReport:
    """What :func:`export` wrote, read back from the written file.

    Attributes:
        path: the written file.
        format: ``"onnx"`` or ``"torchscript"``.
        model: the network's name.
        input_shape: ``(C, H, W)`` of one image.
        inputs: the graph's inputs (``name``, ``shape``, ``dtype``).
        opset: the ONNX opset the file declares (None for TorchScript).
        feature_adds: Adds of two feature maps in the graph (shortcuts; 0 for a plain net).
        expected_shortcut_adds: ``model.count_shortcut_adds()`` when the model has it.
        parameters: parameters of the deployed network.
        max_rel_error: the exported model against PyTorch on random inputs (None unverified).
        input_contract: the contract the file records (None if it records none).
    """

    path: str
    format: str
    model: str
    input_shape: list[int]
    inputs: list[dict[str, Any]]
    opset: int | None
    feature_adds: int
    expected_shortcut_adds: int | None
    parameters: int
    max_rel_error: float | None
    input_contract: InputContract | None

    @property
    def expects(self) -> str | None:
        """The recorded contract in words (None without one)."""
        return self.input_contract.describe() if self.input_contract is not None else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form ``resdist export`` prints: the fields, the contract as a dict, and
        :attr:`expects`."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if self.input_contract is not None:
            out["input_contract"] = self.input_contract.to_dict()
        out["expects"] = self.expects
        return out


class _Written(NamedTuple):
    """An exported file and the figures read back from it."""

    path: Path
    inputs: list[dict[str, Any]]
    opset: int | None
    feature_adds: int
    max_rel_error: float | None


def _check_export_request(fmt: str, input_dtype: str, preprocess: bool) -> None:
    if fmt not in ("onnx", "torchscript"):
        raise DeployError(f"format must be 'onnx' or 'torchscript', got {fmt!r}")
    if input_dtype not in ("float32", "uint8"):
        raise DeployError(f"input dtype must be float32 or uint8, got {input_dtype!r}")
    if input_dtype == "uint8" and not preprocess:
        raise DeployError("a uint8 input needs the normalisation inside the graph: add "
                          "--preprocess")


def _check_exportable(model: nn.Module, shape: Sequence[int] | None, fmt: str,
                      opset: int) -> None:
    if _model_device(model).type == "meta":
        raise DeployError("the model's weights are on the meta device (no data): load them first")
    if shape is None:
        raise DeployError(
            "input_shape (C, H, W) is required: the checkpoint does not store one "
            "(pass --input-shape C H W)"
        )
    if fmt == "onnx":
        require("onnx")
        _check_opset(opset)


def _deploy_form(
    model: nn.Module, contract: InputContract | None, preprocess: bool, input_dtype: str
) -> tuple[nn.Module, nn.Module, InputContract | None]:
    """The network to export, the PyTorch model it is checked against, and its contract
    (``preprocess`` puts the normalisation inside both)."""
    deployed = to_deploy(model)
    if not preprocess:
        return deployed, model, contract
    if contract is None:
        raise DeployError("--preprocess needs the input contract (mean and std), which "
                          "this checkpoint does not record")
    deployed, contract = with_preprocessing(deployed, contract, input_dtype)
    reference = Preprocessed(model, contract.mean, contract.std, input_dtype).eval()
    reference.to(_model_device(model))  # compared where the model lives
    return deployed, reference, contract


def _write_onnx(deployed: nn.Module, reference: nn.Module, out: str | os.PathLike,
                shape: Sequence[int], opset: int, contract: InputContract | None,
                input_dtype: str, verify: bool) -> _Written:
    path = export_onnx(deployed, out, shape, opset=opset, deploy=False, contract=contract,
                       input_dtype=input_dtype)
    adds = count_feature_adds(path)
    err = verify_onnx(path, reference, shape) if verify else None
    return _Written(path, _onnx_inputs(path), onnx_opset(path), adds, err)


def _write_torchscript(deployed: nn.Module, reference: nn.Module, out: str | os.PathLike,
                       shape: Sequence[int], opset: int, contract: InputContract | None,
                       input_dtype: str, verify: bool) -> _Written:
    path = export_torchscript(deployed, out, shape, deploy=False, contract=contract,
                              input_dtype=input_dtype)
    adds = count_torchscript_feature_adds(path)
    err = verify_torchscript(path, reference, shape, input_dtype=input_dtype) \
        if verify else None
    inputs = [{"name": INPUT_NAME, "shape": ["N", *shape], "dtype": input_dtype}]
    return _Written(path, inputs, None, adds, err)


def export(
    checkpoint_or_model: Any,
    fmt: Literal["onnx", "torchscript"],
    out: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    preprocess: bool = False,
    input_dtype: str = "float32",
    contract: InputContract | None = None,
) -> ExportReport:
    """Fold and export a checkpoint (path) or a model to ``out``; returns a small report.

    ``preprocess`` puts the contract's normalisation inside the graph
    (:func:`with_preprocessing`), which then takes [0, 1] float32 images or, with
    ``input_dtype="uint8"``, raw 0..255 pixels. ``contract`` defaults to the checkpoint's.

    Returns:
        An :class:`ExportReport` whose figures are read back from the written file;
        ``max_rel_error`` compares ONNX Runtime or the reloaded TorchScript module with the
        PyTorch model on random inputs at two batch sizes (None with ``verify=False``).
    """
    _check_export_request(fmt, input_dtype, preprocess)
    model, shape, name, found = load_model_source(checkpoint_or_model, input_shape,
                                                  with_contract=True)
    _check_exportable(model, shape, fmt, opset)
    deployed, reference, contract = _deploy_form(model, contract or found, preprocess,
                                                 input_dtype)
    write = _write_onnx if fmt == "onnx" else _write_torchscript
    written = write(deployed, reference, out, shape, opset, contract, input_dtype, verify)
    return ExportReport(
        path=str(written.path),
        format=fmt,
        model=name,
        input_shape=list(shape),
        inputs=written.inputs,
        opset=written.opset,
        feature_adds=written.feature_adds,
        expected_shortcut_adds=(model.count_shortcut_adds()
                                if hasattr(model, "count_shortcut_adds") else None),
        parameters=sum(p.numel() for p in deployed.parameters()),
        max_rel_error=written.max_rel_error,
        input_contract=read_contract(written.path),
    )
