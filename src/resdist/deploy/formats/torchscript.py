"""TorchScript: ``torch.jit.trace`` of the folded network, for C++/mobile loaders.

The input contract is the archive's extra file ``input_contract.json``, read from the zip's
directory without loading the module. Loading a TorchScript file runs the code it carries, so
resdist runs one only when the user says they trust it (``--trust-torchscript``) or it has
just written the file itself.
"""

from __future__ import annotations

import copy
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...data.contract import InputContract
from ...models.fold import to_deploy
from ...safe_load import is_torchscript, load_torchscript, torchscript_extra_file
from ..errors import DeployError
from .common import (
    CONTRACT_KEY,
    INPUT_NAME,
    ExportJob,
    FileInfo,
    Runner,
    Written,
    check_input_shape,
    contract_from_text,
    example_input,
    first_output,
    reference_outputs,
    relative_error,
    write_file,
)

__all__ = ["count_torchscript_feature_adds", "export_torchscript", "file_info", "load_runner",
           "read_contract", "sniff", "verify_torchscript", "write"]


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
    shape = check_input_shape(input_shape)
    deployed = to_deploy(model) if deploy else copy.deepcopy(model).eval()
    deployed = deployed.float().cpu()
    example = example_input(2, shape, input_dtype)
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


def _module(module_or_path: Any, trusted: bool) -> Any:
    """A TorchScript module, or the file at a path loaded with ``torch.jit.load`` (which runs
    the code the file carries) when ``trusted`` says the caller wrote it."""
    if isinstance(module_or_path, (str, os.PathLike)):
        if not os.path.isfile(module_or_path):
            raise DeployError(f"TorchScript file not found: {module_or_path}")
        return load_torchscript(module_or_path, trusted=trusted,
                                what="pass the loaded module, or trusted=True for a file you "
                                "exported yourself")
    return module_or_path


def count_torchscript_feature_adds(module_or_path: Any, *, trusted: bool = False) -> int:
    """Number of ``aten::add`` nodes in a traced module adding two computed tensors (neither a
    constant nor a parameter): the shortcut additions. A path is loaded only with
    ``trusted=True`` (loading runs its code: for files you exported yourself)."""
    module = _module(module_or_path, trusted)
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
    *,
    trusted: bool = False,
) -> float:
    """Largest relative error between a saved TorchScript module and ``model`` on random inputs
    (of ``input_dtype``). A path is loaded only with ``trusted=True`` (loading runs its code:
    for files you exported yourself)."""
    module = _module(module_or_path, trusted)
    shape = check_input_shape(input_shape)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = example_input(b, shape, input_dtype, gen)
        ref = reference_outputs(model, x)
        with torch.no_grad():
            out = first_output(module(x)).float().numpy()
        worst = max(worst, relative_error(out, ref))
    return worst




def read_contract(path: Path) -> InputContract | None:
    """The contract in the archive's extra file (None: none); the module is not loaded."""
    return contract_from_text(path, torchscript_extra_file(path, f"{CONTRACT_KEY}.json"))


def sniff(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (its zip directory only is read)."""
    return is_torchscript(path)


def file_info(path: Path) -> FileInfo:
    """TorchScript exports are fp32 and record no data set; the shape is the contract's."""
    del path
    return FileInfo()


def load_runner(path: Path, threads: int | None = None, trusted: bool = False) -> Runner:
    """The loaded module as a runner; refused unless ``trusted`` (loading runs its code)."""
    module = load_torchscript(path, trusted=trusted, what="use its checkpoint or ONNX export, "
                              "or pass --trust-torchscript if you trust where the file came "
                              "from")
    if threads:
        torch.set_num_threads(threads)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return first_output(module(torch.from_numpy(batch))).float().numpy()

    return run


def write(job: ExportJob) -> Written:
    """Trace and save ``job`` as TorchScript, count its shortcut Adds and verify it."""
    if job.int8:
        raise DeployError("TorchScript has no INT8 export in resdist; use --format onnx, "
                          "executorch or tflite with --quantize int8")
    path = export_torchscript(job.deployed, job.out, job.input_shape, deploy=False,
                              contract=job.contract, input_dtype=job.input_dtype)
    module = load_torchscript(path, trusted=True, what="")  # the file written just above
    adds = count_torchscript_feature_adds(module)
    err = verify_torchscript(module, job.reference, job.input_shape,
                             input_dtype=job.input_dtype) if job.verify else None
    inputs = [{"name": INPUT_NAME, "shape": ["N", *job.input_shape], "dtype": job.input_dtype}]
    return Written(path, inputs, None, adds, err)
