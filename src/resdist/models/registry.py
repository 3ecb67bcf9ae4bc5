"""Model registry: ``create_model("plain56", num_classes=10, in_chans=1)``."""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable

from torch import nn

from ..errors import ResdistError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


class UnknownModelError(ResdistError, ValueError):
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
    return name in _MODELS


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name; keyword arguments go to its builder.

    Raises:
        UnknownModelError: ``name`` is not registered (the message lists the valid names).
    """
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list(_MODELS), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(
            f"unknown model {name!r}.{hint} Valid names: {', '.join(list_models())}"
        )
    return _MODELS[name](**kwargs)


def teacher_name_for(student: str) -> str:
    """The ResNet counterpart of a plain model name (``plain56 -> resnet56``)."""
    if student.startswith("plain"):
        return "resnet" + student[len("plain"):]
    return student
