"""A finished job's report (the worker's JSON: per-layer bytes, Pareto curve, timings), for the
dashboard's charts, with the estimated damage of the chosen plan from the stored scores."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from slimline import jobs
from slimline.db import artifacts
from slimline.db.session import session_scope
from slimline.errors import NotFound
from slimline.schemas import ErrorOut
from slimline.service.deps import EngineDep, SettingsDep, TenantDep
from slimline.service.store import ArtifactStore

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_ERRORS: dict[int | str, dict[str, object]] = {c: {"model": ErrorOut} for c in (401, 404, 503)}


class ReportOut(BaseModel):
    job_id: str
    report: dict[str, Any] = Field(description="the report artifact's JSON")
    plan_damage: float | None = Field(
        description="estimated damage of the chosen plan from the stored scores (the Pareto "
        "curve's scale); null when the method stored no scores"
    )


def plan_damage(scores: dict[str, Any] | None, plan: dict[str, Any] | None) -> float | None:
    """Sum over the scored layers of the stored damage of the option the plan chose."""
    if not scores or not plan:
        return None
    chosen = plan.get("layers", plan)
    total = 0.0
    try:
        for layer in scores["layers"]:
            option = chosen.get(layer["name"])
            if option not in layer["options"]:
                return None
            total += float(layer["damage"][layer["options"].index(option)])
    except (KeyError, TypeError, ValueError, IndexError):
        return None
    return total


@router.get("/{job_id}/report", responses=_ERRORS)
def job_report(
    job_id: str, settings: SettingsDep, engine: EngineDep, tenant: TenantDep
) -> ReportOut:
    """404 until the job has succeeded (the report is written with the checkpoint)."""
    with session_scope(engine) as s:
        found = artifacts.job_artifacts(s, tenant.id, job_id, kind="report")
        scores = artifacts.get_scores(s, tenant.id, job_id) if found else None
        job = jobs.get_job(s, tenant.id, job_id)
    if not found:
        raise NotFound(
            f"job {job_id!r} has no report yet ({job.status})", field="job_id", value=job_id
        )
    path = ArtifactStore(settings.artifact_dir).resolve(found[-1].path)
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        raise NotFound(
            f"job {job_id!r}: its report is recorded but unreadable", field="job_id", value=job_id
        ) from None
    return ReportOut(job_id=job_id, report=report, plan_damage=plan_damage(scores, job.plan))
