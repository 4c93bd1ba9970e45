"""slimline: fit a trained PyTorch model into a size budget while keeping its accuracy.

``slimline.load(path)`` rebuilds a compressed checkpoint; ``slimline.Client(url, key)`` talks to
the service. Importing the package does not import torch (the API process must not), so both
import their machinery on first use.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

__version__ = "0.1.0"


def load(path: str | os.PathLike[str], program: str | os.PathLike[str] | None = None) -> nn.Module:
    """A runnable model from a slimline checkpoint; ``program`` is the .pt2 for uploaded models."""
    from slimline.loader import load as _load

    return _load(path, program=program)


def __getattr__(name: str) -> object:
    if name == "Client":
        from slimline.client import Client

        return Client
    raise AttributeError(f"module 'slimline' has no attribute {name!r}")
