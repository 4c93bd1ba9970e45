"""Jobs: create (idempotent), list, read, follow (paged or server-sent events), cancel,
re-solve for another budget, list artifacts."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from slimline import jobs
from slimline.db import artifacts
from slimline.db.session import session_scope
from slimline.schemas import (
    ArtifactOut,
    ErrorOut,
    EventOut,
    EventPage,
    JobDetailOut,
    JobOut,
    JobSpecIn,
    Page,
    ResolveIn,
    ResolveOut,
)
from slimline.service import resolve as resolve_service
from slimline.service import submit
from slimline.service.deps import EngineDep, EnqueuerDep, SettingsDep, TenantDep
from slimline.service.errors import RecordId
from slimline.service.routes.artifacts import artifact_out

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
_ERRORS: dict[int | str, dict[str, object]] = {
    c: {"model": ErrorOut} for c in (400, 401, 404, 409, 422, 429, 503)
}
SSE_POLL_S = 0.5  # how often a stream re-reads the job's events
SSE_KEEPALIVE_S = 15.0
MAX_EVENT_ID = 2**63 - 1  # event ids are BIGINT: a larger number is refused (422), not sent


_REPLAY: dict[int | str, dict[str, object]] = {
    200: {"model": JobDetailOut, "description": "a replay of an Idempotency-Key: the first job"}
}


@router.post("", status_code=201, responses={**_ERRORS, **_REPLAY})
def create_job(
    spec: JobSpecIn,
    response: Response,
    settings: SettingsDep,
    engine: EngineDep,
    enqueuer: EnqueuerDep,
    tenant: TenantDep,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> JobDetailOut:
    """Queue a compression job. Repeating a request with the same ``Idempotency-Key`` returns
    the first job (200) instead of making another."""
    job, created = submit.create_job(engine, enqueuer, settings, tenant, spec, idempotency_key)
    response.status_code = 201 if created else 200
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobDetailOut.model_validate(job)


@router.get("", responses=_ERRORS)
def list_jobs(
    engine: EngineDep,
    tenant: TenantDep,
    status: Annotated[list[str] | None, Query(description="one or more statuses")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> Page[JobOut]:
    with session_scope(engine) as s:
        page, next_cursor = jobs.list_jobs(s, tenant.id, status=status, limit=limit, cursor=cursor)
    return Page[JobOut](items=[JobOut.model_validate(j) for j in page], next_cursor=next_cursor)


@router.get("/{job_id}", responses=_ERRORS)
def get_job(job_id: RecordId, engine: EngineDep, tenant: TenantDep) -> JobDetailOut:
    with session_scope(engine) as s:
        return JobDetailOut.model_validate(jobs.get_job(s, tenant.id, job_id))


def _sse(event: jobs.JobEvent) -> str:
    data = EventOut.model_validate(event).model_dump_json()
    return f"id: {event.id}\nevent: {event.kind}\ndata: {data}\n\n"


@router.get(
    "/{job_id}/events",
    response_model=EventPage,
    responses={**_ERRORS, 200: {"content": {"text/event-stream": {}}}},
)
async def job_events(
    job_id: RecordId,
    request: Request,
    engine: EngineDep,
    tenant: TenantDep,
    after_id: Annotated[int, Query(ge=0, le=MAX_EVENT_ID)] = 0,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    stream: bool = False,
    last_event_id: Annotated[str | None, Header(max_length=32)] = None,
) -> Response:
    """The job's events after ``after_id``, oldest first. With ``?stream=1`` (or
    ``Accept: text/event-stream``) a server-sent event stream that ends with an ``end`` event
    once the job is finished and every event was sent."""

    def read(after: int) -> tuple[jobs.Job, list[jobs.JobEvent]]:
        with session_scope(engine) as s:
            job = jobs.get_job(s, tenant.id, job_id)
            return job, jobs.job_events(s, tenant.id, job_id, after_id=after, limit=limit)

    wants_stream = stream or "text/event-stream" in request.headers.get("accept", "")
    if not wants_stream:
        _, page = await run_in_threadpool(read, after_id)
        last = page[-1].id if page else after_id
        items = [EventOut.model_validate(e) for e in page]
        out = EventPage(items=items, last_id=last, more=len(page) == limit)
        return Response(out.model_dump_json(), media_type="application/json")
    if last_event_id is not None and last_event_id.isascii() and last_event_id.isdigit():
        # ASCII digits only ('²'.isdigit() is true), and within the events' id range.
        after_id = min(max(after_id, int(last_event_id)), MAX_EVENT_ID)
    first = await run_in_threadpool(read, after_id)  # 404 before the stream starts
    poll_s: float = getattr(request.app.state, "sse_poll_s", SSE_POLL_S)

    async def sse() -> AsyncIterator[str]:
        after, (job, batch) = after_id, first
        quiet = 0.0
        while True:
            for e in batch:
                yield _sse(e)
                after = e.id
            if batch:
                quiet = 0.0
            if len(batch) < limit:
                if job.terminal:
                    end = {"status": job.status, "job_id": job.id}
                    yield f"event: end\ndata: {json.dumps(end)}\n\n"
                    return
                if await request.is_disconnected():
                    return
                await asyncio.sleep(poll_s)
                quiet += poll_s
                if quiet >= SSE_KEEPALIVE_S:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
            job, batch = await run_in_threadpool(read, after)

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)


@router.post("/{job_id}/cancel", responses=_ERRORS)
def cancel_job(job_id: RecordId, engine: EngineDep, tenant: TenantDep) -> JobDetailOut:
    """A queued job is cancelled at once; a running one stops at its worker's next check
    (``cancel_requested`` is true until then). A finished job cannot be cancelled (409)."""
    with session_scope(engine) as s:
        return JobDetailOut.model_validate(jobs.request_cancel(s, tenant.id, job_id))


@router.post("/{job_id}/resolve", responses=_ERRORS)
def resolve_job(
    job_id: RecordId, body: ResolveIn, engine: EngineDep, tenant: TenantDep
) -> ResolveOut:
    """Re-solve the job's stored scores for another budget: the plan that budget would get,
    with its predicted bytes and damage (no training; submit a job to get its checkpoint)."""
    return resolve_service.resolve(engine, tenant, job_id, body.budget)


@router.get("/{job_id}/artifacts", responses=_ERRORS)
def job_artifacts(job_id: RecordId, engine: EngineDep, tenant: TenantDep) -> list[ArtifactOut]:
    with session_scope(engine) as s:
        return [artifact_out(a) for a in artifacts.job_artifacts(s, tenant.id, job_id)]
