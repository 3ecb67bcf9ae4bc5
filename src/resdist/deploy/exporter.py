"""Export the deploy form of a network, in any registered format, and check the result.

The exported graph of a plain student has no elementwise ``Add`` between feature maps
(docs/method.md section 7); each format counts them where its graph can be read. Exported files
carry the model's input contract (:mod:`resdist.data.contract`) in the format's own metadata
(:mod:`resdist.deploy.formats`); :func:`with_preprocessing` bakes the normalisation into the
graph. The formats themselves live in :mod:`resdist.deploy.formats`, one module each.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.contract import InputContract
from ..models.fold import to_deploy
from .errors import DeployError
from .formats import (
    FORMATS,
    ExportJob,
    Format,
    check_export_contract,
    check_export_target,
    format_of,
    get_format,
)
from .formats.common import (
    CONTRACT_KEY,
    INPUT_NAME,
    OUTPUT_NAME,
    check_finite_outputs,
    check_input_shape,
    model_device,
)
from .formats.onnx import (
    DEFAULT_OPSET,
    MAX_OPSET,
    MIN_OPSET,
    check_graph_contract,
    count_feature_adds,
    export_onnx,
    onnx_opset,
    save_onnx,
    verify_onnx,
)
from .formats.torchscript import (
    count_torchscript_feature_adds,
    export_torchscript,
    verify_torchscript,
)

__all__ = [
    "CONTRACT_KEY", "DEFAULT_OPSET", "ExportReport", "INPUT_NAME", "MAX_OPSET", "MIN_OPSET",
    "OUTPUT_NAME", "Preprocessed", "check_graph_contract", "count_feature_adds",
    "count_torchscript_feature_adds", "export", "export_onnx", "export_torchscript",
    "load_model_source", "onnx_opset", "read_contract", "save_onnx", "verify_onnx",
    "verify_torchscript", "with_preprocessing",
]


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


def read_contract(path: str | os.PathLike) -> InputContract | None:
    """The input contract an exported file records (None if it records none).

    Read without running anything (an ONNX graph's metadata, a TorchScript archive's zip
    directory, ...) and checked field by field; where the graph can be read, its input (type,
    fixed dims) and output class count must agree with it.

    Raises:
        DeployError: no such file, not an export resdist reads, or a malformed contract.
    """
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"model file not found: {path}")
    fmt = format_of(path)
    if fmt is None:
        raise DeployError(f"{path} is not an exported model resdist reads "
                          f"({', '.join(f.label for f in FORMATS.values())})")
    return fmt.read_contract(path)


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
        shape = check_input_shape(input_shape) if input_shape is not None else None
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
    shape = check_input_shape(shape) if shape is not None else None
    contract = ckpt.contract  # None: neither recorded nor derivable; exported without one
    if contract is not None and shape is not None and list(shape) != contract.input_shape:
        contract = dataclasses.replace(contract, input_shape=list(shape))
    found = (model, shape, ckpt.model_name, contract)
    return found if with_contract else found[:3]


@dataclasses.dataclass
class ExportReport:
    """What :func:`export` wrote, read back from the written file.

    Attributes:
        path: the written file.
        format: the format's ``--format`` name.
        model: the network's name.
        input_shape: ``(C, H, W)`` of one image.
        inputs: the graph's inputs (``name``, ``shape``, ``dtype``).
        opset: the ONNX opset the file declares (None for other formats).
        feature_adds: Adds of two feature maps in the graph (shortcuts; 0 for a plain net;
            None for a format without a graph, such as safetensors).
        expected_shortcut_adds: ``model.count_shortcut_adds()`` when the model has it.
        parameters: parameters of the deployed network.
        max_rel_error: the exported model against PyTorch on random inputs (None unverified).
        input_contract: the contract the file records (None if it records none).
        precision: ``"fp32"`` or ``"int8"``.
        extra: format-specific figures (e.g. a runtime's planned memory, INT8 agreement).
    """

    path: str
    format: str
    model: str
    input_shape: list[int]
    inputs: list[dict[str, Any]]
    opset: int | None
    feature_adds: int | None
    expected_shortcut_adds: int | None
    parameters: int
    max_rel_error: float | None
    input_contract: InputContract | None
    precision: str = "fp32"
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

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


def _check_export_request(fmt: Format, input_dtype: str, preprocess: bool,
                          quantize: str | None) -> None:
    if input_dtype not in ("float32", "uint8"):
        raise DeployError(f"input dtype must be float32 or uint8, got {input_dtype!r}")
    if input_dtype == "uint8" and not preprocess:
        raise DeployError("a uint8 input needs the normalisation inside the graph: add "
                          "--preprocess")
    if quantize not in (None, "int8"):
        raise DeployError(f"quantize must be None or 'int8', got {quantize!r}")
    if quantize and not fmt.int8:
        with_int8 = ", ".join(f.name for f in FORMATS.values() if f.int8)
        raise DeployError(f"{fmt.label} has no INT8 export in resdist; choose --format "
                          f"{with_int8}")


def _check_exportable(model: nn.Module, shape: Sequence[int] | None) -> None:
    if model_device(model).type == "meta":
        raise DeployError("the model's weights are on the meta device (no data): load them first")
    if shape is None:
        raise DeployError(
            "input_shape (C, H, W) is required: the checkpoint does not store one "
            "(pass --input-shape C H W)"
        )


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
    reference.to(model_device(model))  # compared where the model lives
    return deployed, reference, contract


def export(
    checkpoint_or_model: Any,
    fmt: str,
    out: str | os.PathLike,
    input_shape: Sequence[int] | None = None,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    preprocess: bool = False,
    input_dtype: str = "float32",
    contract: InputContract | None = None,
    quantize: str | None = None,
    calibration: Any = None,
    check_images: Any = None,
    data_name: str | None = None,
) -> ExportReport:
    """Fold and export a checkpoint (path) or a model to ``out``; returns a small report.

    ``fmt`` is a registered format (:data:`resdist.deploy.formats.FORMATS`: ``onnx``,
    ``torchscript``, and the runtimes whose extras are installed). ``preprocess`` puts the
    contract's normalisation inside the graph (:func:`with_preprocessing`), which then takes
    [0, 1] float32 images or, with ``input_dtype="uint8"``, raw 0..255 pixels. ``contract``
    defaults to the checkpoint's. ``quantize="int8"`` uses the runtime's own quantiser, fed by
    ``calibration`` (a function returning prepared batches) and checked on ``check_images``;
    ONNX INT8 from a checkpoint is :func:`resdist.deploy.quantize.quantize_checkpoint`.

    Returns:
        An :class:`ExportReport` whose figures are read back from the written file;
        ``max_rel_error`` compares the file, run in its own runtime, with the PyTorch model on
        random inputs at two batch sizes (None with ``verify=False``).
    """
    from ..engine.checkpoint import Checkpoint, load_checkpoint

    form = get_format(fmt)
    _check_export_request(form, input_dtype, preprocess, quantize)
    check_export_target(out, form)  # before anything is built or written
    source = checkpoint_or_model
    if isinstance(source, (str, os.PathLike)):
        source = load_checkpoint(source)
    model, shape, name, found = load_model_source(source, input_shape, with_contract=True)
    _check_exportable(model, shape)
    deployed, reference, contract = _deploy_form(model, contract or found, preprocess,
                                                 input_dtype)
    check_export_contract(contract)
    check_finite_outputs(reference, shape, input_dtype)
    kwargs = dict(source.model_kwargs) if isinstance(source, Checkpoint) else None
    job = ExportJob(deployed, reference, Path(out), tuple(shape), contract, input_dtype,
                    verify, opset, quantize == "int8", calibration, check_images, data_name,
                    model_name=name if kwargs is not None else None, model_kwargs=kwargs)
    written = form.write(job)
    return ExportReport(
        path=str(written.path),
        format=form.name,
        model=name,
        input_shape=list(shape),
        inputs=written.inputs,
        opset=written.opset,
        feature_adds=written.feature_adds,
        expected_shortcut_adds=(model.count_shortcut_adds()
                                if hasattr(model, "count_shortcut_adds") else None),
        parameters=sum(p.numel() for p in deployed.parameters()),
        max_rel_error=written.max_rel_error,
        input_contract=form.read_contract(written.path),
        precision=written.precision,
        extra=written.extra,
    )
