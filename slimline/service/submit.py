"""Creating a job: validate the request against the records, create the row, commit, THEN
send ``slimline.run_job`` with the job's id (Celery's guide: enqueue after commit).

What is checked here, before any worker sees the job: the budget parses; the model is the
tenant's and not known to be invalid; the data is a named dataset or the tenant's upload; the
budget is reachable when the model's inspection already measured the smallest size (a ratio
resolves against the dense size). A model still pending inspection is accepted and the worker
decides. Replays of an ``Idempotency-Key`` return the first job and send nothing; the rate
limit counts only new jobs, per tenant (all its keys together; creations of one tenant are
serialized so concurrent requests cannot all slip under it). If the broker is down after the
commit the job stays queued and the sweeper sends it later (``requeue_after_s``): the row, not
the message, is the truth.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from slimline import jobs
from slimline.budget import Budget, parse_budget
from slimline.config import Settings
from slimline.db import uploads
from slimline.db.session import session_scope
from slimline.db.tables import TenantRow
from slimline.enqueue import RUN_JOB, Enqueuer
from slimline.errors import InfeasibleBudget, InvalidData, InvalidModel, NotFound, Unavailable
from slimline.schemas import NAMED_DATASETS, JobSpecIn
from slimline.service.errors import RateLimited

log = logging.getLogger("slimline.service")
RATE_WINDOW_S = 60


def _is_id(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _check_feasible(budget: Budget, model: uploads.ModelRecord) -> None:
    if model.smallest_bytes is None or model.dense_bytes is None:
        return  # not inspected yet: the worker checks
    want = budget.resolve(model.dense_bytes)
    if want < model.smallest_bytes:
        most = model.dense_bytes / model.smallest_bytes
        raise InfeasibleBudget(
            f"budget {budget} ({want} bytes) is below the smallest size slimline can reach for "
            f"model {model.id}: {model.smallest_bytes} bytes (at most {most:.1f}x of its "
            f"{model.dense_bytes}-byte dense checkpoint); ask for at least "
            f"{model.smallest_bytes} bytes",
            field="budget",
            value=str(budget),
        )


def _data(session: Session, tenant: jobs.Tenant, data: str) -> tuple[str | None, str | None]:
    """(dataset_id, data_name)."""
    if data in NAMED_DATASETS:
        return None, data
    if not _is_id(data):
        raise InvalidData(
            f"data {data!r} is neither a named dataset ({', '.join(NAMED_DATASETS)}) nor an "
            "uploaded dataset's id",
            field="data",
            value=data,
        )
    try:
        ds = uploads.get_dataset(session, tenant.id, data)
    except NotFound:
        raise NotFound(f"dataset {data!r} not found", field="data", value=data) from None
    if ds.status == "invalid":
        why = (ds.error or {}).get("message", "inspection refused it")
        raise InvalidData(f"dataset {data!r} is invalid: {why}", field="data", value=data)
    return ds.id, None


def _model(session: Session, tenant: jobs.Tenant, model_id: str) -> uploads.ModelRecord:
    try:
        model = uploads.get_model(session, tenant.id, model_id)
    except NotFound:
        raise NotFound(f"model {model_id!r} not found", field="model", value=model_id) from None
    if model.status == "invalid":
        why = (model.error or {}).get("message", "inspection refused it")
        raise InvalidModel(f"model {model_id!r} is invalid: {why}", field="model", value=model_id)
    return model


def create_job(
    engine: Engine,
    enqueuer: Enqueuer,
    settings: Settings,
    tenant: jobs.Tenant,
    spec: JobSpecIn,
    idempotency_key: str | None,
) -> tuple[jobs.Job, bool]:
    budget = parse_budget(spec.budget)
    spec_json = spec.model_copy(update={"budget": str(budget)}).model_dump(mode="json")
    if not _is_id(spec.model):
        raise NotFound(f"model {spec.model!r} not found", field="model", value=spec.model)
    with session_scope(engine) as s:
        # One job creation per tenant at a time: the rate limit counts the tenant's jobs after
        # inserting this one, and without the lock concurrent requests (each not seeing the
        # others' uncommitted rows) all passed it. Row lock on Postgres; SQLite serializes
        # writers anyway.
        s.execute(select(TenantRow.id).where(TenantRow.id == tenant.id).with_for_update())
        model = _model(s, tenant, spec.model)
        dataset_id, data_name = _data(s, tenant, spec.data)
        _check_feasible(budget, model)
        job, created = jobs.create_job(
            s, tenant.id, spec_json, model_id=model.id, dataset_id=dataset_id,
            data_name=data_name, idempotency_key=idempotency_key,
            max_attempts=settings.max_attempts,
        )  # fmt: skip
        if created:
            since = datetime.now(UTC) - timedelta(seconds=RATE_WINDOW_S)
            if jobs.count_jobs_since(s, tenant.id, since) > settings.rate_limit_jobs_per_minute:
                raise RateLimited(
                    f"more than {settings.rate_limit_jobs_per_minute} jobs in the last minute; "
                    "retry later",
                    retry_after_s=RATE_WINDOW_S,
                )
    if created:
        try:
            enqueuer.send(RUN_JOB, job.id)
        except Unavailable as exc:
            log.warning("job %s committed but not sent (the sweeper will): %s", job.id, exc)
    return job, created
