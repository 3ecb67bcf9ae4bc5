"""safetensors: the folded network's state dict, for loading into your own PyTorch code.

No graph: the file holds the deploy form's tensors (BatchNorm and Dirac kernels folded into the
convolutions) and, in the safetensors metadata, the input contract (``input_contract``, JSON)
and the resdist model that rebuilds the network (``resdist.model``, ``resdist.model_kwargs``):
``to_deploy(create_model(name, **kwargs)).load_state_dict(load_file(path))``. Reading one runs
no code, so ``eval`` and ``predict`` open it without ``--trust-torchscript``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.contract import InputContract
from ..errors import DeployError, require
from .common import (
    CONTRACT_KEY,
    INPUT_NAME,
    ExportJob,
    FileInfo,
    Runner,
    Written,
    contract_from_text,
    first_line,
    first_output,
    verify_runner,
    write_file,
)

__all__ = ["MODEL_KEY", "MODEL_KWARGS_KEY", "file_info", "load_deployed", "load_runner",
           "read_contract", "sniff", "write"]

MODEL_KEY = "resdist.model"  # metadata: the registry name that rebuilds the network
MODEL_KWARGS_KEY = "resdist.model_kwargs"  # metadata: its builder arguments (JSON)
MAX_HEADER = 100 << 20  # bytes of a safetensors header that resdist reads


def _metadata(path: Path) -> dict[str, str]:
    """The metadata of a safetensors file, read from its header alone (no tensor is loaded).

    Raises:
        DeployError: the file is not a safetensors file, or its header is damaged.
    """
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if not 2 <= size <= MAX_HEADER:
                raise ValueError("header size out of range")
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error) as e:
        raise DeployError(f"cannot read {path}: not a safetensors file, or damaged "
                          f"({first_line(e)})") from e
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        return {}
    return meta


def sniff(path: Path) -> bool:
    """Whether ``path`` is a safetensors file (its header parses)."""
    try:
        _metadata(path)
    except DeployError:
        return False
    return True


def read_contract(path: Path) -> InputContract | None:
    """The contract in the file's metadata (None: none, e.g. a timm checkpoint)."""
    return contract_from_text(path, _metadata(path).get(CONTRACT_KEY))


def file_info(path: Path) -> FileInfo:
    """fp32 tensors; the shape is the contract's."""
    contract = read_contract(path)
    shape = tuple(contract.input_shape) if contract is not None else None
    return FileInfo(input_shape=shape)  # type: ignore[arg-type]


def load_deployed(path: str | Path) -> nn.Module:
    """The folded network of a safetensors export, rebuilt from the resdist model its metadata
    names and loaded with its tensors (in eval mode).

    Raises:
        DeployError: the file names no resdist model (a state dict from elsewhere), or its
            tensors do not fit that model.
    """
    from ...engine.checkpoint import load_weights
    from ...errors import ResdistError
    from ...models import create_model
    from ...models.fold import to_deploy

    path = Path(path)
    meta = _metadata(path)
    name = meta.get(MODEL_KEY)
    if not name:
        raise DeployError(f"{path} names no resdist model ({MODEL_KEY} metadata): load its "
                          "tensors into your own network, or export it with resdist export")
    try:
        kwargs = json.loads(meta.get(MODEL_KWARGS_KEY) or "{}")
        network = to_deploy(create_model(name, **kwargs))
        load_weights(network, require("safetensors.torch").load_file(str(path)), str(path))
    except ResdistError as e:
        raise DeployError(f"{path}: {e}") from e
    except (ValueError, TypeError) as e:  # bad JSON or builder arguments, damaged tensors
        raise DeployError(f"{path}: cannot rebuild {name!r} from it ({first_line(e)})") from e
    return network.eval()


def load_runner(path: Path, threads: int | None = None, trusted: bool = False) -> Runner:
    """The rebuilt folded network (PyTorch, CPU) as a runner; nothing in the file runs."""
    del trusted
    network = load_deployed(path)
    if threads:
        torch.set_num_threads(threads)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return first_output(network(torch.from_numpy(batch))).float().numpy()

    return run


def write(job: ExportJob) -> Written:
    """Save the folded network's tensors with the contract and model in the metadata; read
    the file back and verify it against the PyTorch model."""
    if job.int8:
        raise DeployError("safetensors holds the fp32 state dict; use --format onnx with "
                          "--quantize int8")
    if job.contract is not None and job.contract.normalized_inside:
        raise DeployError("a state dict has no graph to put the normalisation in: drop "
                          "--preprocess (the contract's mean and std say how to normalise)")
    serialize = require("safetensors.torch").save  # to bytes: the file is written by us,
    # so a full disk is an OSError and the file keeps the usual permissions (save_file's are 0600)
    tensors = {k: v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
               .contiguous() for k, v in job.deployed.state_dict().items()}
    meta: dict[str, Any] = {"format": "pt"}
    if job.contract is not None:
        meta[CONTRACT_KEY] = job.contract.to_json()
    if job.model_name:
        meta[MODEL_KEY] = job.model_name
        meta[MODEL_KWARGS_KEY] = json.dumps(job.model_kwargs or {})
    data = serialize(tensors, metadata=meta)
    path = write_file(job.out, lambda tmp: tmp.write_bytes(data), "safetensors file")
    err = None
    if job.verify and job.model_name:
        err = verify_runner(load_runner(path), job.reference, job.input_shape, job.input_dtype)
    inputs = [{"name": INPUT_NAME, "shape": ["N", *job.input_shape], "dtype": job.input_dtype}]
    return Written(path, inputs, None, None, err,
                   extra={"tensors": len(tensors), "rebuild": f"{MODEL_KEY} metadata"})
