"""OpenVINO IR: Intel's runtime for CPUs, GPUs and NPUs at the edge (``resdist[openvino]``).

An export is two files: ``NAME.xml`` (the graph) and ``NAME.bin`` (the weights, kept in fp32:
``compress_to_fp16=False``). The input contract is JSON in the model's ``rt_info``
(``resdist/input_contract``), read back by parsing the XML, which runs nothing. The network is
converted from the folded PyTorch module with ``openvino.convert_model`` (batch dimension
dynamic). INT8 is NNCF's post-training quantisation (``nncf.quantize``) calibrated on the
run's training images. Inference runs on the CPU plugin with ``INFERENCE_PRECISION_HINT=f32``
so that fp32 files are timed and scored in fp32 even where the CPU has bf16 units.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...atomic import write_failure
from ...data.contract import InputContract
from ..errors import DeployError, require
from ..quiet import quiet
from .common import (
    CONTRACT_KEY,
    INPUT_NAME,
    ExportJob,
    FileInfo,
    Runner,
    Written,
    checked,
    contract_from_text,
    example_input,
    first_line,
)

__all__ = ["count_feature_adds", "file_info", "load_runner", "read_contract", "sniff", "write"]

RT_SECTION = "resdist"
DATA_KEY = "data"
MAX_XML_BYTES = 256 * 2**20  # an IR graph of a CNN is far smaller; refuse to parse more


def _ov() -> Any:
    return require("openvino")


def _convert(job: ExportJob) -> Any:
    ov = _ov()
    c, h, w = job.input_shape
    example = example_input(1, job.input_shape, job.input_dtype)
    try:
        with quiet("openvino"), torch.no_grad():
            model = ov.convert_model(job.deployed.float().cpu().eval(), example_input=example,
                                     input=[(-1, c, h, w)])
    except Exception as e:
        raise DeployError(f"OpenVINO conversion failed: {first_line(e)}") from e
    model.inputs[0].get_tensor().set_names({INPUT_NAME})
    return model


def _quantize(model: Any, job: ExportJob) -> Any:
    nncf = require("nncf")
    if job.calibration is None:
        raise DeployError("OpenVINO INT8 needs calibration images: export from a checkpoint "
                          "whose data can be read, or pass --calibration-data")
    images = [np.ascontiguousarray(b[i:i + 1], dtype=np.float32)
              for b in job.calibration() for i in range(len(b))]
    try:
        with quiet("nncf"):
            return nncf.quantize(model, nncf.Dataset(images), subset_size=len(images))
    except Exception as e:
        raise DeployError(f"NNCF quantisation failed: {first_line(e)}") from e


def _save(model: Any, out: Path) -> Path:
    """``NAME.xml`` and ``NAME.bin`` written to a temporary folder beside them, then moved into
    place (weights first), so a reader never sees a new graph with old weights; a failure
    leaves the previous pair as it was."""
    ov = _ov()
    if out.suffix.lower() != ".xml":
        raise DeployError(f"an OpenVINO export is NAME.xml (with NAME.bin beside it), not {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    existed = out.is_file()
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
            ov.save_model(model, os.path.join(tmp, "m.xml"), compress_to_fp16=False)
            os.replace(os.path.join(tmp, "m.bin"), out.with_suffix(".bin"))
            os.replace(os.path.join(tmp, "m.xml"), out)
    except DeployError:
        raise
    except Exception as e:  # OpenVINO's writer reports a full disk as a RuntimeError
        kept = "the previous file is kept" if existed else "no file was written"
        said = " ".join(str(e).split())[:120] or type(e).__name__
        reason = write_failure(e) or (f"OpenVINO's writer failed ({said}); check that the disk "
                                      "has room")
        raise DeployError(f"cannot write the OpenVINO files {out}: {reason}; {kept}") from e
    return out


def _xml_root(path: Path) -> ElementTree.Element:
    if path.stat().st_size > MAX_XML_BYTES:
        raise DeployError(f"{path}: {path.stat().st_size} bytes is too large for an OpenVINO "
                          "graph of a CNN; not a resdist export")
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as e:
        raise DeployError(f"cannot read {path}: not an OpenVINO IR file, or truncated "
                          f"({first_line(e)}); export it again") from e
    if root.tag != "net":
        raise DeployError(f"{path} is XML but not an OpenVINO IR graph (root <{root.tag}>)")
    return root


def _rt_value(root: ElementTree.Element, key: str) -> str | None:
    node = root.find(f"rt_info/{RT_SECTION}/{key}")
    return None if node is None else node.get("value")


def read_contract(path: Path) -> InputContract | None:
    """The contract in the IR's ``rt_info`` (None: none), read by parsing the XML."""
    return contract_from_text(path, _rt_value(_xml_root(path), CONTRACT_KEY))


def sniff(path: Path) -> bool:
    """Whether ``path`` is an OpenVINO IR graph (``.xml`` whose root is ``<net>``)."""
    if path.suffix.lower() != ".xml":
        return False
    try:
        _xml_root(path)
    except DeployError:
        return False
    return True


def file_info(path: Path) -> FileInfo:
    """INT8 when the graph holds FakeQuantize layers; the data set and shape it records."""
    root = _xml_root(path)
    int8 = any(layer.get("type") == "FakeQuantize" for layer in root.iter("layer"))
    contract = read_contract(path)
    shape = tuple(contract.input_shape) if contract is not None else None
    return FileInfo("int8" if int8 else "fp32", _rt_value(root, DATA_KEY), shape)


def count_feature_adds(model: Any) -> int:
    """``Add`` ops of an ``ov.Model`` adding two computed rank-4 tensors (no constant input)."""
    count = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Add":
            continue
        sources = [i.get_source_output().get_node().get_type_name() for i in op.inputs()]
        rank = op.get_output_partial_shape(0).rank
        if "Constant" not in sources and (rank.is_dynamic or rank.get_length() == 4):
            count += 1
    return count


def load_runner(path: Path, threads: int | None = None, trusted: bool = False) -> Runner:
    """The IR compiled for the CPU plugin (fp32 inference, ``threads`` inference threads)."""
    del trusted  # an IR file carries no code
    ov = _ov()
    _xml_root(path)  # a damaged or foreign file is said in one line before OpenVINO reads it
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    try:
        compiled = ov.Core().compile_model(os.fspath(path), "CPU", config)
    except Exception as e:
        raise DeployError(f"OpenVINO cannot load {path}: {first_line(e)}") from e
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        try:
            return np.array(request.infer({0: batch})[compiled.outputs[0]])
        except Exception as e:
            raise DeployError(f"OpenVINO failed on a batch of shape {batch.shape}: "
                              f"{first_line(e)}") from e

    return run


def write(job: ExportJob) -> Written:
    """Convert, optionally quantise with NNCF, save atomically, read back and verify."""
    model = _convert(job)
    adds = count_feature_adds(model)
    if job.int8:
        model = _quantize(model, job)
        if job.data_name:
            model.set_rt_info(job.data_name, [RT_SECTION, DATA_KEY])
    if job.contract is not None:
        model.set_rt_info(job.contract.to_json(), [RT_SECTION, CONTRACT_KEY])
    path = _save(model, job.out)
    extra: dict[str, Any] = {"weights_file": str(path.with_suffix(".bin"))}
    with contextlib.suppress(Exception):
        extra["openvino"] = _ov().__version__
    return checked(job, path, load_runner(path), adds, extra)
