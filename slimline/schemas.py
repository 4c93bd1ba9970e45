"""Request and response models shared by the API, the worker and the client.

Pydantic checks shapes and types here; what needs the records (does the model exist, is the
budget reachable) is checked by the service. No torch: the API imports this module, and so can
a client on a machine without torch. The worker reads a job's stored spec back with
``JobSpecIn.model_validate(job.spec)``.

``METHODS`` (the names of ``slimline.search.method_settings.METHOD_SETTINGS``, torch-free)
and ``NAMED_DATASETS`` let the API refuse an unknown name without importing torch; a test
checks ``METHODS`` equals
``slimline.search.methods.method_names()``.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from slimline.budget import parse_budget
from slimline.search.method_settings import METHOD_SETTINGS

METHODS = tuple(sorted(METHOD_SETTINGS))
DEFAULT_METHOD = "constrained"
NAMED_DATASETS = ("cifar10", "digits", "mnist", "pycode")

T = TypeVar("T")


MAX_SETTINGS_DEPTH = 32
MAX_SETTINGS_BYTES = 64 * 1024


def json_depth(value: Any, limit: int = MAX_SETTINGS_DEPTH) -> int:
    """How many levels of lists and objects ``value`` nests (a scalar: 0), counted
    iteratively and no further than ``limit + 1``."""
    depth, level = 0, [value]
    while True:
        containers = [x for x in level if isinstance(x, dict | list)]
        if not containers or depth > limit:
            return depth
        depth += 1
        level = [v for x in containers for v in (x.values() if isinstance(x, dict) else x)]


def _has_nul(value: Any) -> bool:
    stack = [value]
    while stack:
        x = stack.pop()
        if isinstance(x, str) and "\x00" in x:
            return True
        if isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return False


def _bounded_settings(v: dict[str, Any], field: str) -> dict[str, Any]:
    import json

    if json_depth(v) > MAX_SETTINGS_DEPTH:
        raise ValueError(f"{field} nests too deeply (at most {MAX_SETTINGS_DEPTH} levels)")
    text = json.dumps(v)
    if len(text) > MAX_SETTINGS_BYTES:
        raise ValueError(f"{field} is {len(text)} bytes as JSON; at most {MAX_SETTINGS_BYTES}")
    if _has_nul(v):  # Postgres stores no NUL in text or JSON: refuse it here, not with a 500
        raise ValueError(f"{field} contains a NUL character (\\u0000)")
    return v


def _text_or_number(schema: dict[str, Any]) -> None:
    # The budget is read as text, and a JSON number is accepted as a byte count: say so.
    schema.pop("type", None)
    schema["anyOf"] = [{"type": "string"}, {"type": "number"}]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# ----------------------------------------------------------------------------- requests
class JobSpecIn(_In):
    """A compression job: which model, which data, how small, how."""

    model: str = Field(min_length=1, max_length=64, description="an uploaded model's id")
    data: str = Field(
        min_length=1,
        max_length=64,
        description=f"an uploaded dataset's id, or a named dataset: {', '.join(NAMED_DATASETS)}",
    )
    budget: str = Field(
        description="bytes ('60000', '60KB', '1.5MB', '64KiB') or a ratio of the dense size "
        "('20x'); a JSON number is a byte count",
        examples=["16x", "60KB"],
        json_schema_extra=_text_or_number,
    )
    method: str = Field(default=DEFAULT_METHOD, description=f"one of {', '.join(METHODS)}")
    method_settings: dict[str, Any] = Field(
        default_factory=dict, description="the method's own settings"
    )
    epochs: float | None = Field(
        default=None,
        gt=0,
        le=10_000,
        description="fine-tuning epochs; default: the model's recipe, longer for budgets past "
        "its reference ratio (four times the epochs a doubling, at most eight times)",
    )
    finetune: dict[str, Any] = Field(
        default_factory=dict,
        description="SLOPE fine-tuning settings (distill, temperature, cosine, mask_warmup, "
        "refresh_every, recalibrate_batches, checkpoint_steps, eval_samples; also epochs, "
        "max_steps); defaults: slimline's",
    )
    seed: int = Field(default=0, ge=0, le=2**31 - 1)
    time_limit_s: float | None = Field(
        default=None, gt=0, description="wall-clock limit; default: the server's"
    )

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_text(cls, v: Any) -> Any:
        # A JSON number is a byte count; keep the spec's budget a string either way.
        if isinstance(v, int | float) and not isinstance(v, bool):
            if isinstance(v, float) and (not math.isfinite(v) or v != int(v)):
                return str(v)
            return str(int(v))
        return v

    @field_validator("method_settings")
    @classmethod
    def _method_settings_known(cls, v: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        from slimline.errors import InvalidOption

        v = _bounded_settings(v, "method_settings")
        settings_cls = METHOD_SETTINGS.get(info.data.get("method", ""))
        if settings_cls is not None:  # (an unknown method is refused by its own field)
            try:
                settings_cls.from_dict(v, field="method_settings")
            except InvalidOption as exc:
                raise ValueError(str(exc)) from exc
        return v

    @field_validator("finetune")
    @classmethod
    def _finetune_known(cls, v: dict[str, Any]) -> dict[str, Any]:
        from slimline.errors import InvalidOption
        from slimline.search.settings import FinetuneSettings

        try:
            FinetuneSettings.from_dict(
                {k: x for k, x in v.items() if k not in ("epochs", "max_steps")}, field="finetune"
            )
        except InvalidOption as exc:
            raise ValueError(str(exc)) from exc
        return v

    @field_validator("method")
    @classmethod
    def _method_known(cls, v: str) -> str:
        if v not in METHODS:
            raise ValueError(f"method {v!r} is not known; expected one of {', '.join(METHODS)}")
        return v

    def normalized_budget(self) -> str:
        """The budget in its canonical text form ("16x", "60000"); ``InvalidBudget`` if bad."""
        return str(parse_budget(self.budget))

    @property
    def named_data(self) -> str | None:
        return self.data if self.data in NAMED_DATASETS else None


class ResolveIn(_In):
    budget: str = Field(
        description="bytes or a ratio of the dense size, as for a job",
        json_schema_extra=_text_or_number,
    )

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_text(cls, v: Any) -> Any:
        return JobSpecIn._budget_text(v)


# ---------------------------------------------------------------------------- responses
class ErrorOut(BaseModel):
    """Every error the API returns."""

    code: str = Field(description="stable machine-readable code, e.g. 'infeasible_budget'")
    message: str = Field(description="what went wrong and what would be accepted")
    field: str | None = Field(default=None, description="the input field at fault, if any")


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page; null: last")


class ModelOut(_Out):
    id: str
    kind: Literal["zoo", "pt2"]
    zoo_name: str | None
    config: dict[str, Any] | None
    filename: str
    bytes: int
    sha256: str
    status: Literal["pending", "ready", "invalid"]
    error: dict[str, Any] | None
    layers: list[Any] | None
    dense_bytes: int | None
    smallest_bytes: int | None = Field(description="smallest file slimline can reach")
    created_at: datetime


class DatasetOut(_Out):
    id: str
    filename: str
    bytes: int
    sha256: str
    status: Literal["pending", "ready", "invalid"]
    error: dict[str, Any] | None
    summary: dict[str, Any] | None
    created_at: datetime


class JobOut(_Out):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    stage: str | None
    progress: float
    model_id: str
    dataset_id: str | None
    data_name: str | None
    spec: dict[str, Any]
    metrics: dict[str, Any] | None
    error: dict[str, Any] | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime


class JobDetailOut(JobOut):
    plan: dict[str, Any] | None = Field(description="the per-layer plan, once chosen")


class EventOut(_Out):
    id: int
    at: datetime
    kind: str
    stage: str | None
    data: dict[str, Any] | None


class EventPage(BaseModel):
    items: list[EventOut]
    last_id: int = Field(description="pass as ?after_id= to get the events after these")
    more: bool = Field(description="whether more events were already there (page was full)")


class ArtifactOut(_Out):
    id: str
    job_id: str | None
    kind: str
    bytes: int
    sha256: str
    created_at: datetime
    url: str = Field(description="download path")


class ResolveOut(BaseModel):
    job_id: str
    budget: str
    budget_bytes: int = Field(description="the budget in bytes (a ratio resolved)")
    bytes: int = Field(description="predicted file bytes of the re-solved plan")
    layer_bytes: int
    fixed_bytes: int = Field(description="file bytes outside the scored layers")
    damage: float = Field(description="total estimated damage (lower is better)")
    plan: dict[str, str] = Field(description="layer name -> option, e.g. 'nm2:4/b4/ch'")
    solver: str
    seconds: float


class HealthOut(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
