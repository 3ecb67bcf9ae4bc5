"""Pretrained weights that travel with the package (package data, a couple of MB each).

``fashion-mnist-resnet32.pth``: the thin ResNet-32 teacher of ``resdist reproduce
fashion-mnist-long``, seed 0 (all 60k Fashion-MNIST training images, 3 epochs, one-cycle LR 0.1;
91.71% top-1 on the 10k test set, measured on a 2-core AMD EPYC). A resdist checkpoint holding
weights, model name, settings and input contract only, read with ``weights_only=True`` like any
other. ``make demo`` evaluates it as its teacher instead of training one.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from ..errors import ResdistError

#: Name -> file of the packaged weights.
PACKAGED: dict[str, str] = {"fashion-mnist-resnet32": "fashion-mnist-resnet32.pth"}


def packaged_weights(name: str) -> Path:
    """The path of packaged checkpoint ``name`` (see :data:`PACKAGED`)."""
    if name not in PACKAGED:
        raise ResdistError(f"no packaged weights named {name!r}; there are: {', '.join(PACKAGED)}")
    path = Path(str(resources.files(__name__) / PACKAGED[name]))
    if not path.is_file():
        raise ResdistError(f"packaged weights {path} are missing; reinstall resdist")
    return path
