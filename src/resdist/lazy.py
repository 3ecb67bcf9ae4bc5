"""Lazy package exports (PEP 562): a package lists which submodule holds each public name, and
the submodule is imported when the name is first used. ``import resdist.cli`` (so ``resdist
--help``, ``resdist docs``) then does not import torch, which takes seconds."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, tuple[str, ...]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, given ``{submodule: (names...)}``
    (submodules relative, e.g. ``".build"``). A name is imported from its submodule on first
    access and then kept in the package, so later accesses cost nothing."""
    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__
