"""Score any model file resdist makes or takes: ``resdist eval`` as one library call.

:func:`evaluate_file` looks at what the file is (a resdist checkpoint or run folder, an ONNX
export in fp32 or INT8, a TorchScript export, or a plain state dict of a registry network) and
scores it on the test split (or a checkpoint's validation split) of its data set, prepared as
the file's input contract says unless ``data``/``overrides`` say otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..config import check_device
from ..engine.evaluation import CheckpointScore, evaluate_checkpoint
from ..errors import ResdistError
from .errors import DeployError
from .formats import get_format
from .formats.common import first_line
from .onnx_eval import evaluate_export_file, model_file_kind

__all__ = ["evaluate_file"]


def evaluate_file(
    path: str | os.PathLike,
    *,
    data: str | None = None,
    data_dir: str | None = None,
    download: bool = False,
    batch_size: int | None = None,
    limit_test: int | None = None,
    overrides: Sequence[str] = (),
    split: str = "test",
    device: str = "auto",
    model: str | None = None,
    trust_torchscript: bool = False,
) -> CheckpointScore:
    """Top-1/top-5 and loss of the model in ``path`` on a data set.

    Args:
        path: a resdist checkpoint (or its run folder), an export in any registered format
            (fp32 or INT8, run in its own runtime on the CPU; a TorchScript export only with
            ``trust_torchscript``: loading it runs the code it carries), or, with ``model``, a
            plain state dict of that registry network.
        data, data_dir, download: the data set (default: the one the file records).
        batch_size, limit_test: evaluation batch size and the number of test images.
        overrides: ``section.key=value`` settings, as ``--set`` takes them.
        split: ``"test"``, or ``"val"`` for a checkpoint whose run held out a validation split.
        device: for checkpoints and state dicts: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        model: the registry name of the network a plain state dict belongs to.

    Returns:
        A :class:`~resdist.engine.evaluation.CheckpointScore`; ``line()`` is what
        ``resdist eval`` prints. For an export its ``model_name`` names the file, its format
        and its precision.

    Raises:
        DeployError: ``split="val"`` for an export, or data that does not fit the file.
        TorchScriptFileError: a TorchScript file without ``trust_torchscript``.
        ConfigError, CheckpointError, DataError: as
            :func:`~resdist.engine.evaluation.evaluate_checkpoint`; every error is a
            :class:`~resdist.errors.ResdistError` (a failure of torch or a runtime on the
            images becomes a :class:`DeployError` line).
    """
    try:
        return _evaluate(path, data=data, data_dir=data_dir, download=download,
                         batch_size=batch_size, limit_test=limit_test, overrides=overrides,
                         split=split, device=device, model=model,
                         trust_torchscript=trust_torchscript)
    except ResdistError:
        raise
    except (RuntimeError, ValueError, OSError) as e:  # torch or a runtime, on these images
        raise DeployError(f"cannot score {path}: {first_line(e)}") from e


def _evaluate(path: str | os.PathLike, *, data, data_dir, download, batch_size, limit_test,
              overrides, split, device, model, trust_torchscript) -> CheckpointScore:
    kind = "checkpoint" if model is not None else model_file_kind(path)
    if kind == "checkpoint":  # its device is resolved, and checked, before the file is read
        return evaluate_checkpoint(
            path, data=data, data_dir=data_dir, download=download, batch_size=batch_size,
            limit_test=limit_test, overrides=overrides, split=split, device=device, model=model)
    check_device("device", device)  # an export runs on the CPU, but a bad device is still refused
    if split != "test":
        raise DeployError("an exported model is evaluated on the test split only; --split val "
                          "needs the run's checkpoint (its config holds the validation split)")
    m = evaluate_export_file(path, data, trust=trust_torchscript, data_dir=data_dir,
                             download=download or None, batch_size=batch_size,
                             limit_test=limit_test, overrides=overrides)
    label = get_format(kind).label
    return CheckpointScore(f"{Path(path).name} ({label} {m['precision']})", m["data"], "test",
                           m["top1"], m["top5"], m["loss"], int(m["samples"]),
                           m["preprocessing"])
