"""What a layer can become: `LayerOption`, and a `Plan` mapping module names to options.

An option is (sparsity pattern, bit-width, scale granularity), DESIGN.md "Options per layer".
Following torchao's `FqnToConfig`, a plan is a plain mapping from module name to option that
round-trips through JSON. Options also have a short string form ("nm2:4/b4/ch") used in the
checkpoint header, where every byte counts against the budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from slimline.errors import InvalidOption

SPARSITY_KINDS = ("dense", "nm", "unstructured", "removed")
NM_PATTERNS: tuple[tuple[int, int], ...] = ((1, 4), (2, 4), (1, 8), (2, 8), (4, 8))
BITS = (2, 3, 4, 5, 6, 8, 16)
GRANULARITIES = ("channel", "group", "tensor", "none")
GROUP_SIZES = (16, 32, 64, 128)
# Kept fractions offered for unstructured sparsity: dense enough to matter, sparse enough
# that the position code (not the values) dominates at the low end.
DENSITIES = (
    0.5, 0.375, 0.25, 0.1875, 0.125, 0.09375, 0.0625, 0.046875, 0.03125, 0.015625,
    0.01171875, 0.0078125, 0.005859375, 0.00390625,
)  # fmt: skip

_GRAN_SHORT = {"channel": "ch", "tensor": "t", "none": ""}


@dataclass(frozen=True)
class LayerOption:
    """How one weight tensor is stored.

    Canonical forms (so equal choices compare equal):
      - ``removed``: bits 0, granularity "none" (weights gone; bias/folded norm remain).
      - 16 bits: fp16 values, no scales, granularity "none".
      - 2..8 bits: integer codes with fp16 scales shared per output channel, per group of
        ``group_size`` consecutive input weights of a row, or once per tensor.
    """

    sparsity: str = "dense"  # dense | nm | unstructured | removed
    bits: int = 16  # bits per kept value; 16 = fp16; 0 only for removed
    n: int = 0  # nm: weights kept per group of m (along the input dimension)
    m: int = 0  # nm: group length
    density: float = 1.0  # unstructured: fraction of weights kept, 0 < density < 1
    granularity: str = "none"  # channel | group | tensor (quantized) ; none (fp16, removed)
    group_size: int = 0  # granularity "group": input weights sharing one scale

    def __post_init__(self) -> None:
        if self.sparsity not in SPARSITY_KINDS:
            raise InvalidOption(
                f"sparsity {self.sparsity!r} is not one of {', '.join(SPARSITY_KINDS)}",
                field="sparsity",
                value=self.sparsity,
            )
        if self.sparsity == "removed":
            if (self.bits, self.n, self.m, self.density, self.granularity, self.group_size) != (
                0,
                0,
                0,
                1.0,
                "none",
                0,
            ):
                raise InvalidOption(
                    "a removed layer takes no bits, pattern, density or scales",
                    field="bits",
                    value=self.bits,
                )
            return
        if self.bits not in BITS:
            raise InvalidOption(
                f"bits {self.bits!r} is not one of {', '.join(map(str, BITS))}",
                field="bits",
                value=self.bits,
            )
        if self.sparsity == "nm":
            if (self.n, self.m) not in NM_PATTERNS:
                allowed = ", ".join(f"{n}:{m}" for n, m in NM_PATTERNS)
                raise InvalidOption(
                    f"N:M pattern {self.n}:{self.m} is not one of {allowed}",
                    field="n:m",
                    value=f"{self.n}:{self.m}",
                )
        elif self.n or self.m:
            raise InvalidOption(
                f"n and m are only for sparsity 'nm', not {self.sparsity!r}",
                field="n:m",
                value=f"{self.n}:{self.m}",
            )
        if self.sparsity == "unstructured":
            if not 0.0 < self.density < 1.0:
                raise InvalidOption(
                    f"unstructured density must be in (0, 1), got {self.density!r}",
                    field="density",
                    value=self.density,
                )
        elif self.density != 1.0:
            raise InvalidOption(
                f"density is only for sparsity 'unstructured', not {self.sparsity!r}",
                field="density",
                value=self.density,
            )
        if self.bits == 16:
            if self.granularity != "none" or self.group_size:
                raise InvalidOption(
                    "fp16 values (bits 16) have no scales: granularity must be 'none'",
                    field="granularity",
                    value=self.granularity,
                )
            return
        if self.granularity not in ("channel", "group", "tensor"):
            raise InvalidOption(
                f"granularity {self.granularity!r} is not one of channel, group, tensor "
                f"(needed for {self.bits}-bit values)",
                field="granularity",
                value=self.granularity,
            )
        if (self.granularity == "group") != (self.group_size > 0):
            raise InvalidOption(
                "group_size must be set exactly when granularity is 'group'",
                field="group_size",
                value=self.group_size,
            )
        if self.group_size and self.group_size not in GROUP_SIZES:
            raise InvalidOption(
                f"group_size {self.group_size} is not one of {', '.join(map(str, GROUP_SIZES))}",
                field="group_size",
                value=self.group_size,
            )

    # ----------------------------------------------------------------- derived properties
    @property
    def is_sparse(self) -> bool:
        """True when a mask decides which weights are kept (zero need not be a level)."""
        return self.sparsity in ("nm", "unstructured")

    @property
    def quantized(self) -> bool:
        """True for integer codes with scales (2..8 bits)."""
        return self.sparsity != "removed" and self.bits < 16

    # ------------------------------------------------------------------- serialization
    def to_str(self) -> str:
        """Short form: ``dense/b16``, ``nm2:4/b4/ch``, ``un0.0625/b3/g64``, ``removed``."""
        if self.sparsity == "removed":
            return "removed"
        if self.sparsity == "nm":
            head = f"nm{self.n}:{self.m}"
        elif self.sparsity == "unstructured":
            head = f"un{self.density!r}"  # repr round-trips the float exactly
        else:
            head = "dense"
        parts = [head, f"b{self.bits}"]
        if self.granularity == "group":
            parts.append(f"g{self.group_size}")
        elif self.granularity != "none":
            parts.append(_GRAN_SHORT[self.granularity])
        return "/".join(parts)

    @classmethod
    def from_str(cls, text: str) -> LayerOption:
        """Parse the short form written by `to_str`."""
        bad = InvalidOption(
            f"cannot parse layer option {text!r}; expected e.g. 'dense/b16', 'nm2:4/b4/ch', "
            "'un0.0625/b3/g64', 'dense/b8/t' or 'removed'",
            field="option",
            value=text,
        )
        if text == "removed":
            return cls(sparsity="removed", bits=0)
        parts = text.split("/")
        if len(parts) not in (2, 3) or not parts[1].startswith("b"):
            raise bad
        head, bits_s = parts[0], parts[1][1:]
        kw: dict[str, Any] = {}
        try:
            kw["bits"] = int(bits_s)
            if head == "dense":
                kw["sparsity"] = "dense"
            elif head.startswith("nm"):
                n_s, m_s = head[2:].split(":")
                kw.update(sparsity="nm", n=int(n_s), m=int(m_s))
            elif head.startswith("un"):
                kw.update(sparsity="unstructured", density=float(head[2:]))
            else:
                raise bad
            gran = parts[2] if len(parts) == 3 else ""
            if gran == "ch":
                kw["granularity"] = "channel"
            elif gran == "t":
                kw["granularity"] = "tensor"
            elif gran.startswith("g"):
                kw.update(granularity="group", group_size=int(gran[1:]))
            elif gran:
                raise bad
        except ValueError:
            raise bad from None
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        return {"option": self.to_str()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LayerOption:
        if set(data) != {"option"}:
            raise InvalidOption(
                f"a layer option dict has exactly the key 'option', got {sorted(data)}",
                field="option",
                value=sorted(data),
            )
        return cls.from_str(str(data["option"]))


FP16 = LayerOption()  # "leave it alone": fp16 values, nothing removed
REMOVED = LayerOption(sparsity="removed", bits=0)


def nm_pattern_bits(n: int, m: int) -> int:
    """Bits to name one group's kept positions: ceil(log2 C(m, n)) (2:4 -> 3)."""
    return math.ceil(math.log2(math.comb(m, n)))


class Plan(Mapping[str, LayerOption]):
    """``{module name: LayerOption}`` for every compressible layer of a model. Immutable."""

    VERSION = 1

    def __init__(self, options: Mapping[str, LayerOption]) -> None:
        for name, opt in options.items():
            if not isinstance(opt, LayerOption):
                raise InvalidOption(
                    f"plan entry {name!r} must be a LayerOption, got {type(opt).__name__}",
                    field=name,
                    value=opt,
                )
        self._options = dict(options)

    def __getitem__(self, name: str) -> LayerOption:
        return self._options[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._options == other._options

    def __hash__(self) -> int:
        return hash(tuple(self._options.items()))

    def __repr__(self) -> str:
        return f"Plan({self.to_strs()!r})"

    def to_strs(self) -> dict[str, str]:
        return {name: opt.to_str() for name, opt in self._options.items()}

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.VERSION, "layers": self.to_strs()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Plan:
        version = data.get("version")
        if version != cls.VERSION:
            raise InvalidOption(
                f"plan version {version!r} is not supported (this slimline reads {cls.VERSION})",
                field="version",
                value=version,
            )
        layers = data.get("layers")
        if not isinstance(layers, Mapping):
            raise InvalidOption(
                "plan 'layers' must be an object of name -> option string",
                field="layers",
                value=layers,
            )
        return cls({str(k): LayerOption.from_str(str(v)) for k, v in layers.items()})

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Plan:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidOption(f"plan is not valid JSON: {exc}", field="plan") from None
        if not isinstance(data, Mapping):
            raise InvalidOption("plan JSON must be an object", field="plan")
        return cls.from_dict(data)

    @classmethod
    def uniform(cls, names: list[str], option: LayerOption) -> Plan:
        return cls({name: option for name in names})
