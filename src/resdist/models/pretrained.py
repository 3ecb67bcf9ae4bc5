"""Loading teacher weights: torchvision's pretrained weights by name, or state-dict files
(``.pth`` read weights-only, or ``.safetensors``)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import Tensor, nn

from ..errors import ResdistError
from ..safe_load import UnsafeFileError, load_torch_file, read_failure


class WeightsError(ResdistError, ValueError):
    """Raised when weights cannot be found or do not fit the model."""


def check_state_dict_fits(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raise :class:`WeightsError` naming the first missing/unexpected/mis-shaped tensor."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} keys (first: {missing[0]!r})")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)} keys (first: {unexpected[0]!r})")
        raise WeightsError(f"weights from {source} do not fit the model: {'; '.join(parts)}"
                           f"{_layout_hint(own, state)}")
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            what = ""
            if k == "fc.weight":
                what = (f" (class count: weights have {state[k].shape[0]}, model has "
                        f"{v.shape[0]}: a teacher must first be trained on the data's classes, "
                        "see `resdist docs training`, 'Train a timm teacher here')")
            elif k == "conv1.weight":
                theirs, ours = tuple(state[k].shape), tuple(v.shape)
                if theirs[1] != ours[1]:
                    what = (f" (the weights take {theirs[1]}-channel images, the data has "
                            f"{ours[1]})")
                else:
                    stem = {7: "imagenet", 3: "cifar"}.get(theirs[-1])
                    what = (f" (the weights have a {theirs[-1]}x{theirs[-1]} stem: use --stem "
                            f"{stem}, or --set model.stem={stem})" if stem else
                            " (the stems differ)")
            raise WeightsError(
                f"weights from {source} do not fit the model: {k} has shape "
                f"{tuple(state[k].shape)}, model expects {tuple(v.shape)}{what}"
            )
    _check_values(own, state, source)


def _check_values(own: Mapping[str, Tensor], state: Mapping[str, Tensor], source: str) -> None:
    """Refuse weights of another kind than the model's (integer or bool for float, complex)
    and floating-point weights holding NaN or inf, as checkpoints are refused: loading would
    cast them silently, or train and predict on garbage."""
    for k, v in own.items():
        theirs = state[k]
        if theirs.is_complex() or (v.is_floating_point() and not theirs.is_floating_point()):
            raise WeightsError(f"weights from {source} do not fit the model: {k} is "
                               f"{theirs.dtype}, the model keeps {v.dtype}; the file holds no "
                               "trained float weights, or is damaged")
        if theirs.is_floating_point() and theirs.numel() and not bool(
                torch.isfinite(theirs).all()):
            raise WeightsError(f"weights from {source}: {k} holds NaN or infinite values (saved "
                               "from a run that diverged?); use weights of a finished run")


#: file endings read as weights files rather than as names of published weights
WEIGHTS_FILE_SUFFIXES = (".pth", ".pt", ".tar", ".bin", ".safetensors")


def is_weights_file(weights: str) -> bool:
    """Whether ``weights`` (a ``--teacher-weights`` value) names a file rather than published
    weights such as ``DEFAULT`` or a timm tag: it has a path separator or a weights suffix."""
    return os.path.sep in weights or weights.endswith(WEIGHTS_FILE_SUFFIXES)


def _load_safetensors(path: str | os.PathLike) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as e:
        raise WeightsError(f"{path} is a safetensors file: pip install safetensors (or "
                           "'resdist[timm]', which brings it) to read it") from e
    try:
        return load_file(os.fspath(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise WeightsError(f"cannot read weights file {path}: not a safetensors file, or "
                           "damaged") from e


def _layout_hint(own: Mapping[str, Tensor], state: Mapping[str, Tensor]) -> str:
    """What to change when the weights and the model differ in stem, shortcuts or
    downsampling layout."""
    missing = [k for k in own if k not in state]
    if missing and all(".downsample." in k for k in missing) and set(state) <= set(own):
        return (" (the weights have no shortcut projections: they are a plain network's, a "
                "student's, not a ResNet teacher's; give the teacher's own weights)")
    deep_weights, deep_model = "conv1.0.weight" in state, "conv1.0.weight" in own
    if deep_weights and not deep_model:
        return (" (the weights have ResNet-D's deep stem: use a resnetNd/plainNd model or "
                "--teacher timm:ARCH)")
    if deep_model and "conv1.weight" in state:
        return " (the weights have a single-conv stem: use a resnetN/plainN model)"
    return ""


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """Read a state dict from a ``.safetensors`` file, or a ``.pth`` file read weights-only: a
    bare state dict, or a resdist/torchvision/timm-style checkpoint holding it under ``model``,
    ``state_dict`` or ``model_state_dict``."""
    return _read_weights_file(path)[0]


def _read_weights_file(path: str | os.PathLike) -> tuple[dict[str, Tensor], str | None]:
    """:func:`load_state_dict_file`'s state dict, and the model name when the file is a resdist
    checkpoint (else None)."""
    if not os.path.isfile(path):
        raise WeightsError(f"weights file not found: {path}")
    if os.fspath(path).endswith(".safetensors"):
        return _load_safetensors(path), None
    try:
        obj = load_torch_file(path)
    except UnsafeFileError:
        raise
    except Exception as e:  # corrupt or not a torch file
        raise WeightsError(f"cannot read weights file {path}: {read_failure(e)}") from e
    origin = None
    if isinstance(obj, Mapping) and isinstance(obj.get("model_name"), str):
        origin = obj["model_name"][:100]
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(
            isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()):
        raise WeightsError(f"{path} does not hold a state dict (names -> tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}, origin


def load_torchvision_weights(
    model: nn.Module, arch: str, weights: str, progress: bool = True
) -> nn.Module:
    """Load ``weights`` into ``model``: a file path to a state dict, or a torchvision weights
    name for ``arch`` (``"DEFAULT"``, ``"IMAGENET1K_V1"``, or ``"ResNet50_Weights.IMAGENET1K_V2"``),
    fetched through torchvision's cache/download."""
    if is_weights_file(weights):
        state, origin = _read_weights_file(weights)
        source = weights if origin is None else f"{weights} (a resdist checkpoint of {origin})"
    elif arch.endswith("d") and arch.startswith("resnet"):
        raise WeightsError(f"torchvision publishes no {arch} weights: use --teacher timm:{arch} "
                           f"--teacher-weights TAG (timm's weights), or a state-dict file")
    else:
        import torchvision

        enum_name = weights if "." in weights else f"{_weights_enum(arch)}.{weights}"
        try:
            w = torchvision.models.get_weight(enum_name)
        except (ValueError, KeyError, AttributeError) as e:
            raise WeightsError(f"unknown torchvision weights {enum_name!r}") from e
        try:
            state = w.get_state_dict(progress=progress)
        except Exception as e:  # offline and not cached
            raise WeightsError(
                f"could not fetch torchvision weights {enum_name} ({e}); download them once with "
                f"network access (they are cached under {torch.hub.get_dir()}) or pass a "
                "state-dict file instead"
            ) from e
        source = f"torchvision {enum_name}"
    check_state_dict_fits(model, state, source)
    model.load_state_dict(state)
    return model


def _weights_enum(arch: str) -> str:
    return "ResNet" + arch.removeprefix("resnet") + "_Weights"
