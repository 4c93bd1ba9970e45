"""The contract every search method fulfils (optuna's `BaseSampler` style: stated once here).

A method receives a `SearchContext` — the model with its dense weights, its compressible
layers, calibration data and the byte budget for the payload (container header already taken
off) — and returns a `Plan` whose exact payload bytes fit that budget. Methods never touch files,
databases or HTTP; a method that cannot meet the budget raises `InfeasibleBudget` saying the
smallest size it can reach.

Then `finetune` trains the model compressed by the plan and returns the final plan (a method
such as `constrained` may still change it while training; the final plan must fit too). When
it returns, every planned layer of ``ctx.model`` carries its `CompressedWeight`
parametrization, whose mask and scales are what the file will hold. The default is plain
quantization-aware training with the plan fixed.

Each method has one frozen settings object (`settings_cls`), built from a dict by `get_method`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from slimline.errors import InvalidOption
from slimline.search.accounting import layer_bytes
from slimline.search.layers import LayerGeometry
from slimline.search.options import REMOVED, Plan
from slimline.search.settings import FinetuneSettings, MethodSettings
from slimline.search.store_folder import StoreFolder
from slimline.search.training import Progress, TrainConfig, TrainData


@dataclass
class SearchContext:
    model: nn.Module  # dense model (not parametrized); a method must leave it unchanged
    geoms: list[LayerGeometry]
    data: TrainData
    payload_budget: int  # bytes available to layers + other tensors (header excluded)
    other_bytes: int  # bytes of tensors no option applies to (already inside payload_budget)
    progress: Progress | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    seed: int = 0
    should_stop: Callable[[], bool] | None = None  # polled between steps (cancel, time limit)
    # Fine-tuning: SLOPE settings, the dense teacher for distillation (None: no distillation),
    # and where the trainer keeps its checkpoints and resumes from (None: no checkpoints).
    finetune: FinetuneSettings = field(default_factory=FinetuneSettings)
    teacher: nn.Module | None = None
    checkpoint_dir: Path | None = None
    # seconds an earlier stage's search took (its scoring and solving); probing holds itself
    # to a share of the fine-tuning time beside them (`probes.ProbeClock`)
    search_seconds: float = 0.0
    # where measurements of the dense model are kept between jobs (calibration losses:
    # `measurements`; bitshare's opening gate search: `gate_search_store`), in the dense-model
    # cache, held to a size (`store_folder`; a bare path: the default limit); None: this job only
    measurements: StoreFolder | Path | None = None

    @property
    def layer_budget(self) -> int:
        """Bytes the compressible layers may take."""
        return self.payload_budget - self.other_bytes


def search_seconds(report: Mapping[str, Any]) -> float:
    """Seconds of scoring and solving that a method's report records."""
    return sum(float(report.get(k) or 0.0) for k in ("scores_seconds", "allocation_seconds"))


class SearchMethod(ABC):
    name: ClassVar[str] = ""
    settings_cls: ClassVar[type[MethodSettings]] = MethodSettings

    def __init__(self, settings: MethodSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_cls()
        self.last_scores: Any = None  # Scores of the latest scoring pass, for methods that score
        self.report: dict[str, Any] = {}  # figures for the job report (seconds, projections)

    @abstractmethod
    def propose(self, ctx: SearchContext) -> Plan:
        """A plan for every layer in ``ctx.geoms`` whose exact bytes fit ``ctx.layer_budget``."""

    def min_layer_bytes(self, geoms: list[LayerGeometry]) -> int:
        """The fewest layer bytes this method can reach, from the architecture alone, so an
        infeasible budget is refused before any training. Default: every layer removed."""
        return sum(layer_bytes(REMOVED, g).total for g in geoms)

    def finetune(self, ctx: SearchContext, plan: Plan, cfg: TrainConfig) -> Plan:
        """Train ``ctx.model`` compressed by ``plan``; returns the final plan (see module doc).
        Default: SLOPE fine-tuning (`search.slope`) with ``ctx.finetune``, the plan fixed."""
        self.slope(ctx, plan, cfg, ctx.checkpoint_dir)
        return plan

    def slope(
        self, ctx: SearchContext, plan: Plan, cfg: TrainConfig, checkpoint_dir: Path | None
    ) -> None:
        """Apply ``plan`` to ``ctx.model`` and run SLOPE fine-tuning on it (no steps when
        ``cfg.epochs`` is 0: the plan is applied and the model left as compressed)."""
        from slimline.search.slope import SlopeRun

        run = SlopeRun(
            ctx.model,
            ctx.geoms,
            plan,
            ctx.data,
            cfg,
            ctx.finetune,
            teacher=ctx.teacher,
            device=ctx.device,
        )
        if cfg.epochs > 0:
            run.run(
                progress=ctx.progress, should_stop=ctx.should_stop, checkpoint_dir=checkpoint_dir
            )
            self.report["mask_refreshes"] = run.refreshes


_REGISTRY: dict[str, type[SearchMethod]] = {}


def register(cls: type[SearchMethod]) -> type[SearchMethod]:
    _REGISTRY[cls.name] = cls
    return cls


def method_names() -> list[str]:
    _load_builtin()
    return sorted(_REGISTRY)


def get_method(name: str, settings: Mapping[str, Any] | None = None) -> SearchMethod:
    """A method by name, with its settings built (and validated) from ``settings``."""
    _load_builtin()
    if name not in _REGISTRY:
        raise InvalidOption(
            f"method {name!r} is not one of {', '.join(sorted(_REGISTRY))}",
            field="method",
            value=name,
        )
    cls = _REGISTRY[name]
    return cls(cls.settings_cls.from_dict(settings))


def _load_builtin() -> None:
    # importing a method's module registers it
    from slimline.search.methods import (  # noqa: F401
        bitshare,
        constrained,
        optuna_search,
        squantizer,
        uniform,
    )
