"""Frozen settings objects that round-trip through dicts, and the fine-tuning settings.

Torch-free on purpose: the API validates a job's ``finetune`` settings with these classes
before the job is queued, and the API process never imports torch.
"""

from __future__ import annotations

import numbers
import types
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Union, get_args, get_origin, get_type_hints

from slimline.errors import InvalidOption


@dataclass(frozen=True)
class MethodSettings:
    """Base of every settings object: a frozen dataclass that round-trips through dicts."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, field: str = "settings") -> Any:
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidOption(
                f"unknown setting(s) {unknown} for {cls.__name__}; accepted: {sorted(known)}",
                field=field,
                value=unknown,
            )
        hints = get_type_hints(cls)
        for name, value in data.items():
            kinds = _scalar_kinds(hints[name])
            if kinds is not None and not any(_is_kind(value, k) for k in kinds):
                accepted = " or ".join(_KIND_NAMES[k] for k in kinds)
                raise InvalidOption(
                    f"{field}.{name} = {value!r} is of the wrong type; accepted: {accepted}",
                    field=f"{field}.{name}",
                    value=value,
                )
        obj = cls(**data)
        obj.validate(field)
        return obj

    def validate(self, field: str) -> None:
        """Raise ``InvalidOption`` naming the first out-of-range setting (default: none)."""

    def check_ranges(self, field: str, checks: tuple[tuple[str, bool, str], ...]) -> None:
        """Raise ``InvalidOption`` for the first ``(name, ok, accepted)`` that is not ok."""
        for name, ok, accepted in checks:
            if not ok:
                value = getattr(self, name)
                raise InvalidOption(
                    f"{field}.{name} = {value!r} is out of range; accepted: {accepted}",
                    field=f"{field}.{name}",
                    value=value,
                )


_KIND_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               type(None): "null"}  # fmt: skip


def _scalar_kinds(hint: Any) -> tuple[type, ...] | None:
    """The scalar types a field of type ``hint`` takes (``float | None``: float, NoneType);
    None where the hint is not made of them alone (then its values are not checked here)."""
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    return args if all(a in _KIND_NAMES for a in args) else None


def _is_kind(value: Any, kind: type) -> bool:
    """JSON's view: an integer is a number too, true and false are neither."""
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral)
    if kind is float:
        return isinstance(value, numbers.Real)
    return isinstance(value, kind)


@dataclass(frozen=True)
class FinetuneSettings(MethodSettings):
    """SLOPE fine-tuning (DESIGN.md "SLOPE fine-tuning"); the defaults are slimline's, chosen
    by measurement (bench.suite --ablation; README "Benchmarks", bench/FINDINGS.md).

    Plain quantization-aware training is ``FinetuneSettings.plain()``: no distillation, no
    regularizer, masks fixed from the start, no norm re-calibration.
    """

    # Weight of the distillation term: loss = (1 - distill) * task + distill * T^2 * KL(teacher
    # || student) at temperature T. The teacher is the dense model the job started from. Off
    # by default: at 0.25-0.5 it cost 0.1-1.2 points on lenet5, lenet300 and bytegpt within the
    # benchmark's fine-tuning budgets (bench/FINDINGS.md), except where the compressed
    # model is close to the dense one. None (the default): the method decides; the
    # constrained method (slimline's default pipeline) turns it on where its probes find the
    # plan close to the dense model (`ConstrainedSettings.distill_gap`), every other method
    # runs none. A number, 0 included, holds throughout.
    distill: float | None = None
    temperature: float = 2.0
    # lambda of the cosine regularizer: lambda * mean over output-channel rows of every
    # compressed layer of (1 - cos(w_i, w_hat_i)), w the trainable dense row, w_hat its
    # masked and quantized image. Off by default: measured on lenet300 and lenet5
    # (bench/FINDINGS.md) it cost 0.2-0.4 points of accuracy at 64x-128x and much more at
    # 256x; the 32x ablation of session 18 moved 0.02-0.18 points either way.
    cosine: float = 0.0
    # Share of the steps during which masks are re-picked by magnitude (every
    # ``refresh_every`` steps); then they are frozen. 0: masks fixed from the start.
    mask_warmup: float = 0.25
    refresh_every: int = 25
    # Mini-batches used to re-estimate normalization statistics after the masks freeze and
    # at the end of training (eager BatchNorm layers); 0: no re-calibration.
    recalibrate_batches: int = 20
    # Steps between checkpoints; 0: once an epoch, or four times a run when an epoch is longer
    # than the run.
    checkpoint_steps: int = 0
    # Validation samples evaluated at every checkpoint for the progress metric (a language
    # model's samples are sequences: it evaluates 1/16 as many); 0: none.
    eval_samples: int = 2000

    @property
    def distill_share(self) -> float:
        """The distillation weight a run uses: ``distill``, or 0 where the method left it."""
        return self.distill or 0.0

    @classmethod
    def plain(cls) -> FinetuneSettings:
        return cls(distill=0.0, cosine=0.0, mask_warmup=0.0, recalibrate_batches=0)

    def validate(self, field: str) -> None:
        checks = (
            ("distill", self.distill is None or 0.0 <= self.distill <= 1.0, "null or 0 to 1"),
            ("temperature", self.temperature > 0, "above 0"),
            ("cosine", self.cosine >= 0, "0 or more"),
            ("mask_warmup", 0.0 <= self.mask_warmup < 1.0, "in [0, 1)"),
            ("refresh_every", self.refresh_every >= 1, "1 or more"),
            ("recalibrate_batches", self.recalibrate_batches >= 0, "0 or more"),
            ("checkpoint_steps", self.checkpoint_steps >= 0, "0 or more"),
            ("eval_samples", self.eval_samples >= 0, "0 or more"),
        )
        self.check_ranges(field, checks)
