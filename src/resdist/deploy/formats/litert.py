"""LiteRT (TensorFlow Lite, ``.tflite``): the Android standard (``resdist[litert]``).

The folded network is converted with ``litert-torch`` (Google's PyTorch-to-LiteRT converter)
at a fixed batch of 1; the interpreter (``ai-edge-litert``) resizes the batch at run time. The
input keeps PyTorch's ``(N, C, H, W)`` layout (the converter puts the transposes inside). The
input contract is a named entry of the flatbuffer's ``metadata`` list (``input_contract``,
JSON), read back by parsing the flatbuffer, which runs nothing. INT8 is the converter's PT2E
path: per-channel symmetric INT8 weights, INT8 activations calibrated on the run's training
images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...data.contract import InputContract
from ..errors import DeployError, require
from ..quiet import quiet
from .common import (
    CONTRACT_KEY,
    ExportJob,
    FileInfo,
    Runner,
    Written,
    checked,
    contract_from_text,
    example_input,
    first_line,
    write_file,
)

__all__ = ["count_feature_adds", "file_info", "load_runner", "read_contract",
           "read_metadata", "sniff", "write"]

TFLITE_MAGIC = b"TFL3"  # the flatbuffer file identifier, bytes 4..8
DATA_KEY = "resdist_data"
PRECISION_KEY = "resdist_precision"


def _schema() -> Any:
    require("ai_edge_litert")
    from ai_edge_litert import schema_py_generated

    return schema_py_generated


def _with_metadata(data: bytes, entries: dict[str, str]) -> bytes:
    """``data`` (a ``.tflite`` flatbuffer) with named metadata buffers added."""
    from ai_edge_litert.tools import flatbuffer_utils

    schema = _schema()
    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    for name, text in entries.items():
        buf = schema.BufferT()
        buf.data = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
        model.buffers.append(buf)
        entry = schema.MetadataT()
        entry.name = name
        entry.buffer = len(model.buffers) - 1
        model.metadata = [*(model.metadata or []), entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _model(path: Path) -> Any:
    """The flatbuffer's root table, parsed without building an interpreter."""
    schema = _schema()
    data = path.read_bytes()
    if len(data) < 8 or data[4:8] != TFLITE_MAGIC:
        raise DeployError(f"cannot read {path}: not a LiteRT (.tflite) model, or truncated; "
                          "export it again")
    try:
        return schema.Model.GetRootAs(data, 0)
    except Exception as e:
        raise DeployError(f"cannot read {path}: {first_line(e)}; export it again") from e


def read_metadata(path: str | Path) -> dict[str, str]:
    """The named metadata entries of a ``.tflite`` file (text), read without running it."""
    model = _model(Path(path))
    found = {}
    try:
        for i in range(model.MetadataLength()):
            entry = model.Metadata(i)
            raw = model.Buffers(entry.Buffer()).DataAsNumpy()
            if isinstance(raw, np.ndarray):
                found[entry.Name().decode("utf-8", "replace")] = raw.tobytes().decode(
                    "utf-8", "replace")
    except Exception as e:
        raise DeployError(f"cannot read the metadata of {path}: {first_line(e)}; export it "
                          "again") from e
    return found


def read_contract(path: Path) -> InputContract | None:
    """The contract in the flatbuffer's ``input_contract`` metadata (None: none)."""
    return contract_from_text(path, read_metadata(path).get(CONTRACT_KEY))


def sniff(path: Path) -> bool:
    """Whether ``path`` starts like a ``.tflite`` flatbuffer (identifier ``TFL3``)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == TFLITE_MAGIC


def count_feature_adds(path: str | Path) -> int:
    """``ADD`` operators of the main subgraph adding two computed rank-4 tensors."""
    schema = _schema()
    model = _model(Path(path))
    add = schema.BuiltinOperator.ADD
    graph = model.Subgraphs(0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(),
                 model.OperatorCodes(i).DeprecatedBuiltinCode())
             for i in range(model.OperatorCodesLength())]

    def computed(t: int) -> bool:
        tensor = graph.Tensors(t)
        return tensor.ShapeLength() == 4 and model.Buffers(tensor.Buffer()).DataLength() == 0

    count = 0
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        if codes[op.OpcodeIndex()] == add and op.InputsLength() == 2 and all(
                computed(op.Inputs(k)) for k in range(2)):
            count += 1
    return count


def file_info(path: Path) -> FileInfo:
    """Precision and data set the metadata records; the shape is the contract's."""
    meta = read_metadata(path)
    contract = read_contract(path)
    shape = tuple(contract.input_shape) if contract is not None else None
    return FileInfo(meta.get(PRECISION_KEY, "fp32"), meta.get(DATA_KEY), shape)


def _interpreter(path: Path, threads: int | None) -> Any:
    require("ai_edge_litert")
    from ai_edge_litert.interpreter import Interpreter

    _model(path)  # a damaged or foreign file is said in one line before the interpreter
    try:
        return Interpreter(model_path=str(path), num_threads=int(threads) if threads else None)
    except Exception as e:
        raise DeployError(f"LiteRT cannot load {path}: {first_line(e)}; export it again") from e


def _to_input(batch: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """``batch`` as the input tensor takes it: quantised with the tensor's scale and zero
    point where an INT8 model takes integer input, else cast."""
    dtype = np.dtype(detail["dtype"])
    scale, zero = detail.get("quantization", (0.0, 0))
    if dtype.kind in "iu" and batch.dtype.kind == "f" and scale:
        info = np.iinfo(dtype)
        q = np.rint(batch / scale + zero)
        return np.ascontiguousarray(np.clip(q, info.min, info.max).astype(dtype))
    return np.ascontiguousarray(batch, dtype=dtype)


def _from_output(values: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Logits as float32, dequantised where the model outputs integers."""
    scale, zero = detail.get("quantization", (0.0, 0))
    if np.dtype(detail["dtype"]).kind in "iu" and scale:
        return ((values.astype(np.float32) - zero) * scale).astype(np.float32)
    return np.array(values, dtype=np.float32)


def load_runner(path: Path, threads: int | None = None, trusted: bool = False) -> Runner:
    """The LiteRT interpreter on the CPU (its default XNNPACK delegate), resized to each
    batch it is given."""
    del trusted  # a .tflite file carries no code
    interp = _interpreter(path, threads)
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    out_index = out["index"]
    shape: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        try:
            if list(batch.shape) != shape:
                interp.resize_tensor_input(inp["index"], list(batch.shape))
                interp.allocate_tensors()
                shape[:] = list(batch.shape)
            interp.set_tensor(inp["index"], _to_input(batch, inp))
            interp.invoke()
            return _from_output(interp.get_tensor(out_index), out)
        except Exception as e:
            raise DeployError(f"LiteRT failed on a batch of shape {batch.shape}: "
                              f"{first_line(e)}") from e

    return run


def _export_for_quantizer(model: torch.nn.Module, example: torch.Tensor) -> Any:
    """The graph LiteRT's PT2E quantiser annotates. Strict export (TorchDynamo) records each
    call of a module on its own; the non-strict graph groups the two calls of a block's shared
    ``nn.ReLU`` into one partition, which the quantiser's add+ReLU pattern skips, leaving every
    identity shortcut's Add in float. Non-strict export is the fallback for models Dynamo
    cannot trace."""
    try:
        return torch.export.export(model, (example,), strict=True).module()
    except Exception:  # noqa: BLE001 - any tracing failure: the non-strict path still works
        return torch.export.export(model, (example,)).module()


def _quantized(model: torch.nn.Module, example: torch.Tensor, job: ExportJob) -> Any:
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if job.calibration is None:
        raise DeployError("LiteRT INT8 needs calibration images: export from a checkpoint "
                          "whose data can be read, or pass --calibration-data")
    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False))
    prepared = prepare_pt2e(_export_for_quantizer(model, example), quantizer)
    with torch.no_grad():
        for chunk in job.calibration():
            for i in range(len(chunk)):
                prepared(torch.from_numpy(np.ascontiguousarray(chunk[i:i + 1])))
    return convert_pt2e(prepared, fold_quantize=False), QuantConfig(pt2e_quantizer=quantizer)


def _convert(job: ExportJob) -> Any:
    litert_torch = require("litert_torch")
    model = job.deployed.float().cpu().eval()
    example = example_input(1, job.input_shape, job.input_dtype)
    try:
        with quiet("litert_torch", "torch.export", "torchao", "absl"), torch.no_grad():
            if job.int8:
                graph, config = _quantized(model, example, job)
                return litert_torch.convert(graph, (example,), quant_config=config)
            return litert_torch.convert(model, (example,))
    except DeployError:
        raise
    except Exception as e:
        raise DeployError(f"LiteRT conversion failed: {first_line(e)}") from e


def write(job: ExportJob) -> Written:
    """Convert, add the metadata, write atomically, read back and verify (or check INT8
    agreement on real images)."""
    converted = _convert(job)
    entries = {PRECISION_KEY: "int8" if job.int8 else "fp32"}
    if job.contract is not None:
        entries[CONTRACT_KEY] = job.contract.to_json()
    if job.data_name:
        entries[DATA_KEY] = job.data_name

    def fill(tmp: Path) -> None:
        with quiet("litert_torch"):
            converted.export(str(tmp))
        tmp.write_bytes(_with_metadata(tmp.read_bytes(), entries))

    path = write_file(job.out, fill, "LiteRT model")
    return checked(job, path, load_runner(path), count_feature_adds(path))
