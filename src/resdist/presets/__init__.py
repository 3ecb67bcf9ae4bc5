"""Named YAML presets shipped with the package: the paper's recipes and the demo.

A preset's name is its path under this folder without ``.yaml`` (``cifar100/plain18-jointrd``);
``resdist train --preset NAME`` runs it from any directory, ``resdist presets`` lists them. The
first comment line of each file is its one-line description.
"""

from __future__ import annotations

import difflib
from importlib import resources
from importlib.abc import Traversable
from typing import Any

import yaml

from ..config import Config, ConfigError

__all__ = ["list_presets", "load_preset", "preset_description", "preset_dict", "preset_text"]


def _root() -> Traversable:
    return resources.files(__name__)


def _walk(folder: Traversable, prefix: str = "") -> list[str]:
    names = []
    for item in folder.iterdir():
        if item.is_dir():
            names += _walk(item, f"{prefix}{item.name}/")
        elif item.name.endswith(".yaml"):
            names.append(prefix + item.name[: -len(".yaml")])
    return names


def list_presets() -> list[str]:
    """Every preset name, sorted (``cifar10/plain18-jointrd``, ..., ``demo``, ...)."""
    return sorted(_walk(_root()))


def _file(name: str) -> Traversable:
    clean = name[: -len(".yaml")] if name.endswith(".yaml") else name
    names = list_presets()
    if clean not in names:
        close = difflib.get_close_matches(clean, names, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}.{hint} `resdist presets` lists them")
    folder = _root()
    *dirs, last = clean.split("/")
    for part in dirs:
        folder = folder / part
    return folder / f"{last}.yaml"


def preset_text(name: str) -> str:
    """The YAML text of preset ``name`` (comments included)."""
    return _file(name).read_text(encoding="utf-8")


def preset_dict(name: str) -> dict[str, Any]:
    """Preset ``name`` as the nested dict its YAML holds (only the keys it sets)."""
    return yaml.safe_load(preset_text(name)) or {}


def load_preset(name: str) -> Config:
    """Preset ``name`` as a :class:`~resdist.config.Config` (config defaults for unset keys)."""
    return Config.from_dict(preset_dict(name))


def preset_description(name: str) -> str:
    """The first comment line of the preset, without the ``#``."""
    for line in preset_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return ""
