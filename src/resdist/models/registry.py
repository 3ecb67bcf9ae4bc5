"""Model registry: ``create_model("plain56", num_classes=10, in_chans=1)``; names with the
``timm:`` prefix (``create_model("timm:resnet50d")``) are built through timm
(:mod:`~resdist.models.timm_adapter`)."""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..machine import available_memory, format_bytes
from .errors import ModelError
from .timm_adapter import create_timm_resnet, is_timm_name

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(ModelError):
    """Raised for a model name that is not registered."""


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Decorator: register a builder under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style ``pattern``, in natural order."""

    def key(name: str) -> tuple[str, int]:
        digits = "".join(c for c in name if c.isdigit())
        return (name.rstrip("0123456789"), int(digits or 0))

    return sorted((n for n in _MODELS if fnmatch.fnmatch(n, pattern)), key=key)


def model_description(name: str) -> str:
    """First sentence of the builder's docstring (what ``resdist models`` prints)."""
    if name not in _MODELS:
        raise UnknownModelError(f"unknown model {name!r}")
    text = " ".join((_MODELS[name].__doc__ or "").split())
    return re.split(r"[.;](?:\s|$)", text, maxsplit=1)[0]


def is_model(name: str) -> bool:
    """Whether resdist builds ``name``: a registered name, or ``timm:ARCH`` (timm itself says
    whether it knows ``ARCH`` when the model is built)."""
    if is_timm_name(name):
        return re.fullmatch(r"timm:[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?", name) is not None
    return name in _MODELS


_INT_KWARGS = ("num_classes", "in_chans", "stem_width")
_BOOL_KWARGS = ("dirac", "repvgg", "keep_downsample_shortcuts", "shortcuts", "zero_init_residual", "avg_down",
                "progress")
#: builder arguments that fetch or load weights: left out of the size probe
_WEIGHT_KWARGS = ("weights", "progress", "pretrained")


def check_model_kwargs(name: str, kwargs: dict[str, Any]) -> None:
    """The types and ranges of the builder arguments resdist itself passes (``num_classes``,
    ``in_chans``, ``width_mult``, the boolean switches), checked before anything is built.

    Raises:
        ModelError: naming the argument and what it must be.
    """
    for key in _INT_KWARGS:
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise ModelError(f"{name}: {key} must be a whole number >= 1, got {value!r}")
    width = kwargs.get("width_mult")
    if width is not None and (isinstance(width, bool) or not isinstance(width, int | float)
                              or not math.isfinite(width) or width <= 0):
        raise ModelError(f"{name}: width_mult must be a finite number > 0, got {width!r}")
    for key in _BOOL_KWARGS:
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise ModelError(f"{name}: {key} must be true or false, got {kwargs[key]!r}")
    stem = kwargs.get("stem")
    if stem is not None and not isinstance(stem, str):
        raise ModelError(f"{name}: stem must be a string, got {stem!r}")


def _meta_probe(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """``create_model(name, **kwargs)``'s network on PyTorch's ``meta`` device: shapes only,
    nothing allocated, initialised or loaded."""
    probe_kwargs = {k: v for k, v in kwargs.items() if k not in _WEIGHT_KWARGS}
    with torch.device("meta"):
        return _build(name, probe_kwargs)


def model_bytes(name: str, **kwargs: Any) -> int:
    """Bytes of the parameters and buffers ``create_model(name, **kwargs)`` would allocate,
    counted on PyTorch's ``meta`` device (nothing is allocated)."""
    probe = _meta_probe(name, kwargs)
    tensors = [*probe.parameters(), *probe.buffers()]
    return sum(t.numel() * t.element_size() for t in tensors)


def parameter_count(name: str, **kwargs: Any) -> int:
    """Number of parameters ``create_model(name, **kwargs)`` would have, counted on PyTorch's
    ``meta`` device (nothing is allocated or initialised)."""
    return sum(p.numel() for p in _meta_probe(name, kwargs).parameters())


def _build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    builder = _MODELS.get(name) or (lambda **kw: create_timm_resnet(name, **kw))
    try:
        return builder(**kwargs)
    except TypeError as e:  # an argument the builder does not take, or one it sets itself
        text = str(e)
        if found := re.search(r"unexpected keyword argument '(\w+)'", text):
            text = (f"takes no argument {found[1]!r} (was the file or config written for "
                    "another network, or by another resdist version?)")
        elif found := re.search(r"multiple values for (?:keyword )?argument '(\w+)'", text):
            text = f"sets {found[1]!r} itself; leave it out"
        raise ModelError(f"{name} {text}" if found else f"{name}: {text}") from e


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model by name; keyword arguments go to its builder.

    The arguments are checked (:func:`check_model_kwargs`) and the model's size is counted
    first (:func:`model_bytes`), so a model larger than the free memory is refused in one line
    instead of being allocated.

    Raises:
        UnknownModelError: ``name`` is not registered (the message lists the valid names).
        ModelError: a bad argument, or a model that does not fit in memory.
    """
    if not isinstance(name, str) or not is_model(name):
        close = difflib.get_close_matches(str(name), list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}"
        )
    check_model_kwargs(name, kwargs)
    need, free = model_bytes(name, **kwargs), available_memory()
    if free is not None and need > free:
        shown = ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in _WEIGHT_KWARGS)
        raise ModelError(
            f"{name}({shown}) needs {format_bytes(need)} for its weights alone, more than the "
            f"{format_bytes(free)} of memory free on this machine; use a smaller width_mult, "
            "class count or input channel count"
        )
    return _build(name, kwargs)


def student_name_for(teacher: str) -> str | None:
    """The plain counterpart of a ResNet name, when resdist builds it (``resnet56 -> plain56``,
    ``timm:resnet18 -> plain18``, ``timm:resnet50d.a1_in1k -> plain50d``); else None."""
    arch = teacher.removeprefix("timm:").split(".", 1)[0]
    if not arch.startswith("resnet"):
        return None
    name = "plain" + arch[len("resnet"):]
    return name if name in _MODELS else None


def teacher_name_for(student: str) -> str:
    """The ResNet counterpart of a plain model name (``plain56 -> resnet56``,
    ``plain50d -> resnet50d``)."""
    if student.startswith("plain"):
        return "resnet" + student[len("plain"):]
    return student
