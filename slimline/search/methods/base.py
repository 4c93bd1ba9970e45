"""The contract every search method fulfils (optuna's `BaseSampler` style: stated once here).

A method receives a `SearchContext` — the model with its dense weights, its compressible
layers, calibration data and the byte budget for the payload (container header already taken
off) — and returns a `Plan` whose exact payload bytes fit that budget. Methods never touch files,
databases or HTTP; a method that cannot meet the budget raises `InfeasibleBudget` saying the
smallest size it can reach.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import nn

from slimline.errors import InvalidOption
from slimline.search.accounting import layer_bytes
from slimline.search.layers import LayerGeometry
from slimline.search.options import REMOVED, Plan
from slimline.search.training import Progress, TrainData


@dataclass
class SearchContext:
    model: nn.Module  # dense model (not parametrized); a method must leave it unchanged
    geoms: list[LayerGeometry]
    data: TrainData
    payload_budget: int  # bytes available to layers + other tensors (header excluded)
    other_bytes: int  # bytes of tensors no option applies to (already inside payload_budget)
    progress: Progress | None = None

    @property
    def layer_budget(self) -> int:
        """Bytes the compressible layers may take."""
        return self.payload_budget - self.other_bytes


class SearchMethod(ABC):
    name: str = ""

    @abstractmethod
    def propose(self, ctx: SearchContext) -> Plan:
        """A plan for every layer in ``ctx.geoms`` whose exact bytes fit ``ctx.layer_budget``."""

    def min_layer_bytes(self, geoms: list[LayerGeometry]) -> int:
        """The fewest layer bytes this method can reach, from the architecture alone, so an
        infeasible budget is refused before any training. Default: every layer removed."""
        return sum(layer_bytes(REMOVED, g).total for g in geoms)


_REGISTRY: dict[str, type[SearchMethod]] = {}


def register(cls: type[SearchMethod]) -> type[SearchMethod]:
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_method(name: str) -> SearchMethod:
    _load_builtin()
    if name not in _REGISTRY:
        raise InvalidOption(
            f"method {name!r} is not one of {', '.join(sorted(_REGISTRY))}",
            field="method",
            value=name,
        )
    return _REGISTRY[name]()


def _load_builtin() -> None:
    from slimline.search.methods import uniform  # noqa: F401
