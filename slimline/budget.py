"""Size budgets: "60000", "60KB", "1.5MB", "60KiB" or a ratio "20x" of the dense checkpoint.

No torch here: the API validates budgets without importing it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from slimline.errors import InvalidBudget

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}
_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
ACCEPTED = "bytes ('60000', '60KB', '1.5MB', '64KiB') or a ratio of the dense size ('20x')"


@dataclass(frozen=True)
class Budget:
    """Exactly one of ``bytes`` (a file size) or ``ratio`` (dense bytes / file bytes)."""

    bytes: int | None = None
    ratio: float | None = None

    def __post_init__(self) -> None:
        if (self.bytes is None) == (self.ratio is None):
            raise InvalidBudget("a budget is either bytes or a ratio", field="budget")
        if self.bytes is not None and self.bytes <= 0:
            raise InvalidBudget(
                f"budget must be positive, got {self.bytes} bytes; expected {ACCEPTED}",
                field="budget",
                value=self.bytes,
            )
        if self.ratio is not None and not (math.isfinite(self.ratio) and self.ratio >= 1.0):
            raise InvalidBudget(
                f"a ratio budget must be at least 1x, got {self.ratio}x; expected {ACCEPTED}",
                field="budget",
                value=self.ratio,
            )

    def resolve(self, dense_bytes: int) -> int:
        """Budget in bytes for a model whose dense fp32 checkpoint is ``dense_bytes``."""
        if self.bytes is not None:
            return self.bytes
        assert self.ratio is not None
        return int(dense_bytes // self.ratio)

    def __str__(self) -> str:
        return f"{self.bytes}" if self.bytes is not None else f"{self.ratio:g}x"


def parse_budget(text: str | int) -> Budget:
    """Parse a budget string; the error names the value and the accepted forms."""
    if isinstance(text, int) and not isinstance(text, bool):
        return Budget(bytes=text)
    s = str(text).strip()
    if s.lower().endswith("x"):
        try:
            ratio = float(s[:-1])
        except ValueError:
            raise InvalidBudget(
                f"budget {text!r} is not valid: expected {ACCEPTED}", field="budget", value=text
            ) from None
        return Budget(ratio=ratio)
    m = _RE.match(s)
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidBudget(
            f"budget {text!r} is not valid: expected {ACCEPTED}", field="budget", value=text
        )
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if not math.isfinite(value) or value < 1:
        raise InvalidBudget(
            f"budget {text!r} is below one byte or not finite; expected {ACCEPTED}",
            field="budget",
            value=text,
        )
    return Budget(bytes=int(value))
