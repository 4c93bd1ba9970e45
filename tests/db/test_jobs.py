"""The job state machine on both backends: the happy path, retries, cancellation, and every
transition it must refuse."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from slimline import jobs
from slimline.db.session import session_scope
from slimline.errors import Conflict, InvalidInput, NotFound
from tests.db.conftest import SPEC, T0, make_tenant

W1, W2 = "worker-1", "worker-2"


def _queued(engine: Engine, *, max_attempts: int = 3) -> jobs.Job:
    tenant, model_id = make_tenant(engine)
    with session_scope(engine) as s:
        job, created = jobs.create_job(
            s, tenant.id, SPEC, model_id=model_id, data_name="digits",
            max_attempts=max_attempts, now=T0,
        )  # fmt: skip
    assert created
    return job


def _running(engine: Engine, worker: str = W1, **kw: int) -> jobs.Job:
    job = _queued(engine, **kw)
    with session_scope(engine) as s:
        claimed = jobs.claim_job(s, job.id, worker, now=T0)
    assert claimed is not None
    return claimed


def _kinds(engine: Engine, job: jobs.Job) -> list[tuple[str, str | None]]:
    with session_scope(engine) as s:
        events = jobs.job_events(s, job.tenant_id, job.id)
    return [(e.kind, (e.data or {}).get("status")) for e in events]


def test_happy_path(engine: Engine) -> None:
    job = _queued(engine)
    assert (job.status, job.attempts, job.progress, job.enqueued_at) == ("queued", 0, 0.0, T0)
    assert job.created_at == T0 and job.created_at.tzinfo is not None
    with session_scope(engine) as s:
        job = jobs.claim_job(s, job.id, W1, now=T0 + timedelta(seconds=1))
    assert job is not None
    assert (job.status, job.worker, job.attempts) == ("running", W1, 1)
    assert job.started_at == job.heartbeat_at == T0 + timedelta(seconds=1)
    with session_scope(engine) as s:
        assert jobs.heartbeat(s, job.id, W1, now=T0 + timedelta(seconds=5)) is False
        jobs.set_progress(s, job.id, "score", 0.25, worker=W1, now=T0 + timedelta(seconds=6))
        jobs.set_progress(
            s, job.id, "score", 0.5, {"layer": "conv1"}, worker=W1, now=T0 + timedelta(seconds=7)
        )
        jobs.add_event(s, job.id, "epoch", stage="finetune", data={"loss": 0.5, "acc": (1, 2)})
        done = jobs.finish_job(
            s, job.id, W1, {"accuracy": 0.97}, {"conv1": "2:4/4b"}, now=T0 + timedelta(seconds=9)
        )
    assert (done.status, done.progress, done.finished_at) == (
        "succeeded",
        1.0,
        T0 + timedelta(seconds=9),
    )
    with session_scope(engine) as s:
        again = jobs.get_job(s, job.tenant_id, job.id)
        events = jobs.job_events(s, job.tenant_id, job.id)
    assert again == done
    assert again.metrics == {"accuracy": 0.97} and again.plan == {"conv1": "2:4/4b"}
    assert [(e.kind, e.stage) for e in events] == [
        ("status", None), ("status", None), ("stage", "score"), ("progress", "score"),
        ("epoch", "finetune"), ("status", "score"),
    ]  # fmt: skip
    assert [e.data["status"] for e in events if e.kind == "status" and e.data] == [
        "queued", "running", "succeeded",
    ]  # fmt: skip
    assert events[4].data == {"loss": 0.5, "acc": [1, 2]}
    assert events[1].data == {"status": "running", "worker": W1, "attempt": 1}
    assert [e.id for e in events] == sorted(e.id for e in events)


def test_finished_jobs_refuse_every_transition(engine: Engine) -> None:
    job = _running(engine)
    with session_scope(engine) as s:
        jobs.finish_job(s, job.id, W1, {}, None, now=T0)
    for attempt in (
        lambda s: jobs.finish_job(s, job.id, W1, {}, None),
        lambda s: jobs.fail_job(s, job.id, W1, {"code": "x", "message": "y"}),
        lambda s: jobs.heartbeat(s, job.id, W1),
        lambda s: jobs.set_progress(s, job.id, "export", 0.9, worker=W1),
        lambda s: jobs.mark_cancelled(s, job.id, W1),
        lambda s: jobs.request_cancel(s, job.tenant_id, job.id),
    ):
        with pytest.raises(Conflict, match="it is succeeded"), session_scope(engine) as s:
            attempt(s)
    with session_scope(engine) as s:
        assert jobs.claim_job(s, job.id, W2, now=T0 + timedelta(days=1)) is None
        assert jobs.load_job(s, job.id).status == "succeeded"


def test_finishing_a_cancelled_job_is_refused(engine: Engine) -> None:
    job = _running(engine)
    with session_scope(engine) as s:
        requested = jobs.request_cancel(s, job.tenant_id, job.id, now=T0)
        assert requested.status == "running" and requested.cancel_requested
        assert jobs.cancel_requested(s, job.id)
        assert jobs.heartbeat(s, job.id, W1, now=T0) is True
        cancelled = jobs.mark_cancelled(s, job.id, W1, now=T0)
    assert (cancelled.status, cancelled.finished_at) == ("cancelled", T0)
    with pytest.raises(Conflict, match="it is cancelled"), session_scope(engine) as s:
        jobs.finish_job(s, job.id, W1, {"accuracy": 1.0}, None)
    with session_scope(engine) as s:  # cancelling again is harmless
        assert jobs.request_cancel(s, job.tenant_id, job.id).status == "cancelled"
    assert _kinds(engine, job)[-2:] == [("cancel_requested", None), ("status", "cancelled")]


def test_cancel_queued_job_is_immediate_and_it_cannot_be_claimed(engine: Engine) -> None:
    job = _queued(engine)
    with session_scope(engine) as s:
        cancelled = jobs.request_cancel(s, job.tenant_id, job.id, now=T0)
        assert (cancelled.status, cancelled.cancel_requested) == ("cancelled", False)
        assert jobs.cancel_requested(s, job.id)
        assert jobs.claim_job(s, job.id, W1, now=T0) is None


def test_other_workers_cannot_touch_a_held_job(engine: Engine) -> None:
    job = _running(engine, W1)
    with session_scope(engine) as s:
        # Not stale yet: a second claim loses.
        assert jobs.claim_job(s, job.id, W2, now=T0 + timedelta(seconds=60)) is None
    for attempt in (
        lambda s: jobs.heartbeat(s, job.id, W2),
        lambda s: jobs.finish_job(s, job.id, W2, {}, None),
        lambda s: jobs.fail_job(s, job.id, W2, {"code": "x", "message": "y"}),
        lambda s: jobs.set_progress(s, job.id, "score", 0.1, worker=W2),
    ):
        with pytest.raises(Conflict, match="worker-1"), session_scope(engine) as s:
            attempt(s)
    with pytest.raises(Conflict, match="cancel requested can be"), session_scope(engine) as s:
        jobs.mark_cancelled(s, job.id, W1)  # no cancel was requested


def test_stale_job_is_taken_over_and_the_old_worker_is_locked_out(engine: Engine) -> None:
    job = _running(engine, W1)
    with session_scope(engine) as s:
        jobs.set_progress(s, job.id, "finetune", 0.4, worker=W1, now=T0)
        taken = jobs.claim_job(s, job.id, W2, now=T0 + timedelta(seconds=121), stale_after_s=120)
    assert taken is not None
    assert (taken.worker, taken.attempts, taken.stage, taken.progress) == (W2, 2, "finetune", 0.4)
    assert taken.started_at == T0  # first start is kept
    with pytest.raises(Conflict), session_scope(engine) as s:
        jobs.heartbeat(s, job.id, W1)
    with session_scope(engine) as s:
        events = jobs.job_events(s, job.tenant_id, job.id)
    assert events[-1].data == {"status": "running", "worker": W2, "attempt": 2, "taken_from": W1}


def test_retryable_failure_requeues_until_attempts_run_out(engine: Engine) -> None:
    job = _queued(engine, max_attempts=2)
    err = {"code": "cuda_oom", "message": "out of memory", "retryable": True}
    with session_scope(engine) as s:
        jobs.claim_job(s, job.id, W1, now=T0)
        retried = jobs.fail_job(s, job.id, W1, err, now=T0 + timedelta(seconds=1))
    assert (retried.status, retried.attempts, retried.worker, retried.error) == (
        "queued", 1, None, err,
    )  # fmt: skip
    assert retried.enqueued_at == T0 + timedelta(seconds=1)
    with session_scope(engine) as s:
        assert jobs.claim_job(s, job.id, W2, now=T0 + timedelta(seconds=2)) is not None
        final = jobs.fail_job(s, job.id, W2, err, now=T0 + timedelta(seconds=3))
    assert (final.status, final.attempts, final.finished_at) == (
        "failed",
        2,
        T0 + timedelta(seconds=3),
    )
    with session_scope(engine) as s:
        assert jobs.claim_job(s, job.id, W1, now=T0 + timedelta(days=1)) is None


def test_non_retryable_failure_and_failure_after_cancel_are_final(engine: Engine) -> None:
    job = _running(engine)
    with session_scope(engine) as s:
        failed = jobs.fail_job(s, job.id, W1, {"code": "invalid_model", "message": "bad"})
    assert failed.status == "failed" and failed.error == {"code": "invalid_model", "message": "bad"}
    job = _running(engine)
    with session_scope(engine) as s:
        jobs.request_cancel(s, job.tenant_id, job.id)
        err = {"code": "timeout", "message": "slow", "retryable": True}
        assert jobs.fail_job(s, job.id, W1, err).status == "failed"


def test_bad_arguments_are_refused_with_the_field(engine: Engine) -> None:
    job = _running(engine)
    cases = [
        (lambda s: jobs.set_progress(s, job.id, "score", 1.5, worker=W1), "progress"),
        (lambda s: jobs.fail_job(s, job.id, W1, {"message": "no code"}), "error"),
        (lambda s: jobs.finish_job(s, job.id, W1, {"x": float("nan")}, None), "metrics"),
        (lambda s: jobs.add_event(s, job.id, ""), "kind"),
        (lambda s: jobs.list_jobs(s, job.tenant_id, status="done"), "status"),
        (lambda s: jobs.list_jobs(s, job.tenant_id, limit=0), "limit"),
        (lambda s: jobs.list_jobs(s, job.tenant_id, cursor="garbage!"), "cursor"),
    ]
    for call, field in cases:
        with pytest.raises(InvalidInput) as info, session_scope(engine) as s:
            call(s)
        assert info.value.field == field
    with pytest.raises(NotFound), session_scope(engine) as s:
        jobs.claim_job(s, "no-such-job", W1)
    with pytest.raises(NotFound), session_scope(engine) as s:
        jobs.finish_job(s, "no-such-job", W1, {}, None)


def test_idempotency_key_makes_one_job(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    with session_scope(engine) as s:
        first, created = jobs.create_job(
            s, tenant.id, SPEC, model_id=model_id, data_name="digits", idempotency_key="k1"
        )
    with session_scope(engine) as s:
        again, created_again = jobs.create_job(
            s, tenant.id, dict(SPEC), model_id=model_id, data_name="digits", idempotency_key="k1"
        )
        other, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id, idempotency_key="k2")
    assert created and not created_again and again == first and other.id != first.id
    with pytest.raises(Conflict, match="different request"), session_scope(engine) as s:
        jobs.create_job(
            s, tenant.id, {**SPEC, "budget": "8x"}, model_id=model_id, data_name="digits",
            idempotency_key="k1",
        )  # fmt: skip
    # Keys are per tenant: another tenant may use the same one.
    tenant_b, model_b = make_tenant(engine)
    with session_scope(engine) as s:
        theirs, created_b = jobs.create_job(
            s, tenant_b.id, SPEC, model_id=model_b, idempotency_key="k1"
        )
        assert created_b and theirs.id != first.id
        assert len(jobs.list_jobs(s, tenant.id)[0]) == 2


def test_a_job_needs_the_tenants_own_model(engine: Engine) -> None:
    tenant_a, model_a = make_tenant(engine)
    tenant_b, _ = make_tenant(engine)
    with pytest.raises(NotFound) as info, session_scope(engine) as s:
        jobs.create_job(s, tenant_b.id, SPEC, model_id=model_a)
    assert info.value.field == "model_id"
    with pytest.raises(NotFound) as info, session_scope(engine) as s:
        jobs.create_job(s, tenant_a.id, SPEC, model_id=model_a, dataset_id="nope")
    assert info.value.field == "dataset_id"
