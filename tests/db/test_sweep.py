"""The sweeper: dead workers' jobs go back to queued (then fail when out of attempts), and
queued jobs the broker may have lost are handed back for re-sending."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import Engine

from slimline import jobs
from slimline.db.session import session_scope
from tests.db.conftest import SPEC, T0, make_tenant

STALE, RESEND = 120.0, 300.0


def _sweep(engine: Engine, seconds: float) -> jobs.SweepResult:
    with session_scope(engine) as s:
        return jobs.sweep(
            s, stale_after_s=STALE, requeue_after_s=RESEND, now=T0 + timedelta(seconds=seconds)
        )


def test_dead_worker_job_is_requeued_then_failed_after_max_attempts(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id, max_attempts=2, now=T0)
        jobs.claim_job(s, job.id, "w1", now=T0)
        jobs.set_progress(s, job.id, "finetune", 0.5, worker="w1", now=T0 + timedelta(seconds=10))

    # Heartbeat 100 s old: alive.
    assert _sweep(engine, 110) == jobs.SweepResult((), (), (), ())
    swept = _sweep(engine, 131)
    assert swept.requeued == (job.id,) and swept.to_enqueue == (job.id,)
    with session_scope(engine) as s:
        back = jobs.load_job(s, job.id)
    assert (back.status, back.attempts, back.worker, back.stage) == ("queued", 1, None, "finetune")
    assert back.error is not None and back.error["code"] == "worker_lost"
    assert back.enqueued_at == T0 + timedelta(seconds=131)

    with session_scope(engine) as s:  # the second attempt dies too
        assert jobs.claim_job(s, job.id, "w2", now=T0 + timedelta(seconds=140)) is not None
    assert _sweep(engine, 200) == jobs.SweepResult((), (), (), ())
    swept = _sweep(engine, 261)
    assert swept.failed == (job.id,) and swept.requeued == () and swept.to_enqueue == ()
    with session_scope(engine) as s:
        final = jobs.load_job(s, job.id)
        events = jobs.job_events(s, tenant.id, job.id)
    assert (final.status, final.attempts, final.finished_at) == (
        "failed", 2, T0 + timedelta(seconds=261),
    )  # fmt: skip
    assert final.error is not None and final.error["code"] == "worker_lost"
    statuses = [e.data["status"] for e in events if e.kind == "status" and e.data]
    assert statuses == ["queued", "running", "queued", "running", "failed"]


def test_dead_worker_with_a_cancel_requested_is_cancelled(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id, now=T0)
        jobs.claim_job(s, job.id, "w1", now=T0)
        jobs.request_cancel(s, tenant.id, job.id, now=T0)
    swept = _sweep(engine, 500)
    assert swept.cancelled == (job.id,) and swept.to_enqueue == ()
    with session_scope(engine) as s:
        assert jobs.load_job(s, job.id).status == "cancelled"


def test_old_queued_jobs_are_returned_for_re_sending_once_per_period(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    with session_scope(engine) as s:
        old, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id, now=T0)
        new, _ = jobs.create_job(
            s, tenant.id, SPEC, model_id=model_id, now=T0 + timedelta(seconds=200)
        )
        done, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id, now=T0)
        jobs.request_cancel(s, tenant.id, done.id)
    swept = _sweep(engine, 301)
    assert swept.to_enqueue == (old.id,) and swept.requeued == ()
    assert _sweep(engine, 302).to_enqueue == ()  # just re-sent: not again yet
    assert set(_sweep(engine, 602).to_enqueue) == {old.id, new.id}
    with session_scope(engine) as s:
        assert jobs.load_job(s, old.id).enqueued_at == T0 + timedelta(seconds=602)


def test_two_sweepers_do_not_requeue_twice(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id, now=T0)
        jobs.claim_job(s, job.id, "w1", now=T0)
    first, second = _sweep(engine, 1000), _sweep(engine, 1000)
    assert first.requeued == (job.id,) and second.requeued == ()
    with session_scope(engine) as s:
        assert jobs.load_job(s, job.id).attempts == 1
