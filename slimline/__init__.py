"""slimline: fit a trained PyTorch model into a size budget while keeping its accuracy.

``slimline.load(path)`` rebuilds a compressed checkpoint. Importing the package does not import
torch (the API process must not), so ``load`` imports its machinery on first use.
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
