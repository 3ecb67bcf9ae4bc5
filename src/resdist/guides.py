"""The user guides (the repository's ``docs/``), shipped inside the package so that
``resdist docs`` shows them after ``pip install`` as well as in a source checkout."""

from __future__ import annotations

import difflib
from importlib import resources
from importlib.abc import Traversable

from .config import ConfigError

__all__ = ["guide_text", "guide_title", "list_guides"]


def _files() -> dict[str, Traversable]:
    root = resources.files(__package__) / "docs"
    if not root.is_dir():
        return {}
    return {item.name.removesuffix(".md"): item for item in root.iterdir()
            if item.name.endswith(".md") and item.name != "README.md"}


def list_guides() -> list[str]:
    """The guides' names (``method``, ``training``, ``deploy``, ...), sorted."""
    return sorted(_files())


def guide_title(name: str) -> str:
    """The first heading of guide ``name``, without its ``#``."""
    first = guide_text(name).lstrip().splitlines()[0]
    return first.lstrip("#").strip()


def guide_text(name: str) -> str:
    """The markdown text of guide ``name``.

    Raises:
        ConfigError: no guide has that name (the message lists them).
    """
    files = _files()
    key = name.removesuffix(".md")
    if key not in files:
        close = difflib.get_close_matches(key, list(files), n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"no guide named {name!r}.{hint} Guides: "
                          f"{', '.join(sorted(files)) or 'none (a broken install)'}")
    return files[key].read_text(encoding="utf-8")
