"""ExecuTorch (``.pte``): PyTorch's on-device runtime, XNNPACK kernels (``resdist[executorch]``).

The folded network goes through ``torch.export`` at a fixed batch size (default 1: what a
phone runs), is lowered to the XNNPACK delegate and written as one ``.pte`` program. The input
contract is the program's constant method ``input_contract`` (a JSON string), so a ``.pte``
carries it without a sidecar file. INT8 is PyTorch 2 export quantisation (PT2E) with the
XNNPACK quantiser: per-channel symmetric INT8 weights, INT8 activations calibrated on the run's
training images. A ``.pte`` holds no Python code; the runtime loads it with its own
verification, and a file it refuses is one line.

ExecuTorch pins the torch it was built with (``pip install 'resdist[executorch]'`` installs
that torch).
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

__all__ = ["count_feature_adds", "file_info", "load_runner", "read_contract", "set_threads",
           "sniff", "write"]

PTE_MAGIC = b"ET"  # bytes 4..5 of a .pte flatbuffer: the file identifier "ET" + version digits
DATA_METHOD = "resdist_data"
PRECISION_METHOD = "resdist_precision"


def count_feature_adds(graph_module: Any) -> int:
    """``aten.add`` nodes of an exported graph adding two computed rank-4 tensors."""
    count = 0
    for node in graph_module.graph.nodes:
        name = getattr(node.target, "__name__", "")
        if node.op != "call_function" or not name.startswith(("add.", "add_.")):
            continue
        args = [a for a in node.args[:2] if isinstance(a, torch.fx.Node)]
        vals = [a.meta.get("val") for a in args]
        if len(args) == 2 and all(a.op == "call_function" for a in args) and all(
                getattr(v, "dim", lambda: 4)() == 4 for v in vals):
            count += 1
    return count


def _quantize(model: torch.nn.Module, example: torch.Tensor, job: ExportJob) -> Any:
    require("torchao")
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    if job.calibration is None:
        raise DeployError("ExecuTorch INT8 needs calibration images: export from a checkpoint "
                          "whose data can be read, or pass --calibration-data")
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True))
    graph = torch.export.export(model, (example,)).module()
    prepared = prepare_pt2e(graph, quantizer)
    batch = example.shape[0]
    with torch.no_grad():
        for chunk in job.calibration():
            for i in range(0, len(chunk) - len(chunk) % batch, batch):
                prepared(torch.from_numpy(np.ascontiguousarray(chunk[i:i + batch])))
    return convert_pt2e(prepared)


def _program(job: ExportJob) -> tuple[bytes, int, int]:
    """The ``.pte`` bytes of ``job`` at its fixed batch, the shortcut Adds of its graph and
    the bytes of ``forward``'s memory-planned buffers (what the runtime allocates for the
    tensors the plan holds)."""
    require("executorch")
    with quiet(*_LOGGERS):
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
            XnnpackPartitioner,
        )
        from executorch.exir import to_edge_transform_and_lower

    model = job.deployed.float().cpu().eval()
    example = example_input(job.batch, job.input_shape, job.input_dtype)
    methods: dict[str, Any] = {PRECISION_METHOD: "int8" if job.int8 else "fp32"}
    if job.contract is not None:
        methods[CONTRACT_KEY] = job.contract.to_json()
    if job.data_name:
        methods[DATA_METHOD] = job.data_name
    try:
        with quiet(*_LOGGERS), torch.no_grad():
            if job.int8:
                model = _quantize(model, example, job)
            exported = torch.export.export(model, (example,))
            adds = count_feature_adds(exported.graph_module)
            partitioners = [XnnpackPartitioner()] if job.delegate else []
            edge = to_edge_transform_and_lower(exported, partitioner=partitioners,
                                               constant_methods=methods)
            manager = edge.to_executorch()
            plan = next(p for p in manager.executorch_program.execution_plan
                        if p.name == "forward")
            # buffer 0 is the constant buffer, which the runtime sizes itself
            return bytes(manager.buffer), adds, int(sum(plan.non_const_buffer_sizes[1:]))
    except DeployError:
        raise
    except Exception as e:
        raise DeployError(f"ExecuTorch export failed: {first_line(e)}") from e


_LOGGERS = ("torch.utils._pytree", "executorch", "torchao", "torch.export")


def _runtime() -> Any:
    """The ExecuTorch runtime (imported quietly: it logs CPU probing and deprecations)."""
    require("executorch")
    with quiet(*_LOGGERS):
        from executorch.runtime import Runtime

        return Runtime.get()


def _program_file(path: Path) -> Any:
    """The ExecuTorch runtime's program for ``path`` (its own verification), or one line."""
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[4:6] != PTE_MAGIC:
        raise DeployError(f"cannot read {path}: not an ExecuTorch program (.pte), or truncated; "
                          "export it again")
    runtime = _runtime()
    try:
        with quiet(*_LOGGERS):
            return runtime.load_program(path)
    except Exception as e:
        raise DeployError(f"ExecuTorch cannot load {path}: {first_line(e)}; export it again") \
            from e


def _constant(program: Any, name: str) -> Any:
    if name not in program.method_names:
        return None
    try:
        (value,) = program.load_method(name).execute([])
    except Exception as e:
        raise DeployError(f"cannot read {name} from the program: {first_line(e)}") from e
    return value


def read_contract(path: Path) -> InputContract | None:
    """The contract the program's ``input_contract`` constant method returns (None: none)."""
    return contract_from_text(path, _constant(_program_file(path), CONTRACT_KEY))


def sniff(path: Path) -> bool:
    """Whether ``path`` starts like a ``.pte`` program (flatbuffer identifier ``ET``)."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:6] == PTE_MAGIC and head[6:8].isdigit()


def _input_shape(program: Any) -> tuple[int, ...]:
    meta = program.metadata("forward")
    return tuple(int(d) for d in meta.input_tensor_meta(0).sizes())


def file_info(path: Path) -> FileInfo:
    """Precision, data set and ``(C, H, W)`` the program records."""
    program = _program_file(path)
    shape = _input_shape(program)
    data = _constant(program, DATA_METHOD)
    return FileInfo(str(_constant(program, PRECISION_METHOD) or "fp32"),
                    str(data) if data else None,
                    tuple(shape[1:]) if len(shape) == 4 else None)  # type: ignore[arg-type]


def set_threads(threads: int | None) -> None:
    """Size ExecuTorch's (process-wide) XNNPACK thread pool; None leaves it as it is."""
    if threads:
        from executorch.extension.pybindings import portable_lib

        portable_lib._unsafe_reset_threadpool(int(threads))


def load_runner(path: Path, threads: int | None = None, trusted: bool = False) -> Runner:
    """The program's ``forward`` as a runner; batches are cut to the program's fixed batch."""
    del trusted  # a .pte carries no Python code
    program = _program_file(path)
    set_threads(threads)
    method = program.load_method("forward")
    batch = _input_shape(program)[0]

    def run(images: np.ndarray) -> np.ndarray:
        outs = []
        for i in range(0, len(images), batch):
            chunk = images[i:i + batch]
            n = len(chunk)
            if n < batch:  # the program takes exactly `batch` images: pad the last chunk
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
            try:
                (out,) = method.execute([torch.from_numpy(np.ascontiguousarray(chunk))])
            except Exception as e:
                raise DeployError(f"ExecuTorch failed on a batch of shape {chunk.shape}: "
                                  f"{first_line(e)}") from e
            outs.append(out.numpy()[:n])
        return np.concatenate(outs)

    return run


def write(job: ExportJob) -> Written:
    """Export, lower to XNNPACK (unless ``job.delegate`` is False), write atomically, read
    back, verify (or check INT8 agreement on real images), and record the runtime's planned
    memory."""
    batch = job.batch
    data, adds, planned = _program(job)
    path = write_file(job.out, lambda tmp: tmp.write_bytes(data), "ExecuTorch program")
    run = load_runner(path)
    extra: dict[str, Any] = {"batch": batch, "planned_memory_bytes": planned,
                             "kernels": "XNNPACK delegate" if job.delegate else "portable"}
    if job.delegate:
        extra["memory_note"] = "the XNNPACK delegate's own workspace is not in the plan"
    return checked(job, path, run, adds, extra, batch)
