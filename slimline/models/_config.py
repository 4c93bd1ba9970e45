"""Shared plumbing for the zoo's config dataclasses.

Every architecture has one frozen config. They all need the same three things: a dict round
trip that refuses unknown keys (a typo in a job spec must not silently fall back to a default),
and checks that name the field, the value and what is accepted. That lives here once instead of
in six copies.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Self

from slimline.errors import InvalidModel


class ModelConfig:
    """Mixin for frozen dataclass configs: ``to_dict``/``from_dict`` with strict keys."""

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)  # type: ignore[call-overload]
        # Tuples become lists so the dict is exactly what JSON gives back.
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Self:
        if not isinstance(data, Mapping):
            raise InvalidModel(
                f"{cls.__name__} must be a JSON object (dict), got {type(data).__name__}",
                field="config",
                value=data,
            )
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise InvalidModel(
                f"unknown {cls.__name__} key(s) {unknown}; accepted keys: {known}",
                field=str(unknown[0]),
                value=data[unknown[0]],
            )
        return cls(**data)


def check_positive_int(owner: str, field: str, value: Any) -> None:
    """Raise InvalidModel unless ``value`` is an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidModel(
            f"{owner}.{field} must be a positive integer, got {value!r}",
            field=field,
            value=value,
        )


def check_fraction(owner: str, field: str, value: Any) -> None:
    """Raise InvalidModel unless ``value`` is a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < 1:
        raise InvalidModel(
            f"{owner}.{field} must be a number in [0, 1), got {value!r}",
            field=field,
            value=value,
        )


def check_int_tuple(
    owner: str, field: str, value: Any, length: int | None = None
) -> tuple[int, ...]:
    """Return ``value`` as a tuple of positive ints, or raise InvalidModel naming the field."""
    ok = isinstance(value, list | tuple) and len(value) > 0
    ok = ok and all(not isinstance(v, bool) and isinstance(v, int) and v >= 1 for v in value)
    if ok and length is not None and len(value) != length:
        ok = False
    if not ok:
        size = f"{length} " if length is not None else "a non-empty list of "
        raise InvalidModel(
            f"{owner}.{field} must be {size}positive integers, got {value!r}",
            field=field,
            value=value,
        )
    return tuple(value)
