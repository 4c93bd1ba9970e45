"""Races the state machine must win: concurrent claims (one winner) and concurrent creates with
one idempotency key (one job). Threads, real connections, no sleeps: a barrier lines the
threads up, and the deterministic variants on Postgres hold a transaction open until the
other session is seen waiting on its lock in pg_stat_activity."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Engine, func, select, text

from slimline import jobs
from slimline.db.session import session_scope
from slimline.db.tables import JobRow
from tests.db.conftest import SPEC, T0, make_tenant

T = TypeVar("T")


def _race(n: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in n threads released together; return their results in order."""
    barrier = threading.Barrier(n)

    def run(i: int) -> T:
        barrier.wait(timeout=30)
        return work(i)

    with ThreadPoolExecutor(n) as pool:
        return [f.result(timeout=60) for f in [pool.submit(run, i) for i in range(n)]]


def _wait_until_blocked(engine: Engine, deadline_s: float = 20.0) -> None:
    """Return once some session of this database waits on a lock (polls pg_stat_activity)."""
    q = text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    end = time.monotonic() + deadline_s
    with engine.connect() as conn:
        while conn.execute(q).scalar_one() == 0:
            assert time.monotonic() < end, "the second session never blocked on the lock"
            conn.rollback()  # next poll sees a fresh snapshot


def test_concurrent_claims_have_exactly_one_winner(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    rounds = 30 if engine.dialect.name == "postgresql" else 10
    for _ in range(rounds):
        with session_scope(engine) as s:
            job, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id, now=T0)

        def claim(i: int, job_id: str = job.id) -> jobs.Job | None:
            with session_scope(engine) as s:
                return jobs.claim_job(s, job_id, f"worker-{i}", now=T0)

        results = _race(4, claim)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, results
        with session_scope(engine) as s:
            final = jobs.load_job(s, job.id)
            claims = [e for e in jobs.job_events(s, tenant.id, job.id) if e.data == {
                "status": "running", "worker": winners[0].worker, "attempt": 1}]  # fmt: skip
        assert (final.status, final.attempts, final.worker) == ("running", 1, winners[0].worker)
        assert len(claims) == 1


def test_claim_blocked_by_an_uncommitted_claim_loses_when_it_commits(pg: Engine) -> None:
    tenant, model_id = make_tenant(pg)
    with session_scope(pg) as s:
        job, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id, now=T0)
    with ThreadPoolExecutor(1) as pool, session_scope(pg) as first:
        assert jobs.claim_job(first, job.id, "first", now=T0) is not None

        def second() -> jobs.Job | None:
            with session_scope(pg) as s:
                return jobs.claim_job(s, job.id, "second", now=T0)

        pending: Future[jobs.Job | None] = pool.submit(second)
        _wait_until_blocked(pg)
        first.commit()  # the second UPDATE re-checks its WHERE against this row: no match
        assert pending.result(timeout=30) is None
    with session_scope(pg) as s:
        assert jobs.load_job(s, job.id).worker == "first"


def test_concurrent_creates_with_one_key_make_one_job(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    for _ in range(5):
        key = uuid.uuid4().hex

        def create(i: int, key: str = key) -> tuple[jobs.Job, bool]:
            with session_scope(engine) as s:
                return jobs.create_job(s, tenant.id, SPEC, model_id=model_id, idempotency_key=key)

        results = _race(6, create)
        assert sum(created for _, created in results) == 1
        assert len({job.id for job, _ in results}) == 1
        with session_scope(engine) as s:
            count = s.scalar(
                select(func.count()).select_from(JobRow).where(JobRow.idempotency_key == key)
            )
        assert count == 1


def test_create_blocked_on_the_same_key_returns_the_winners_job(pg: Engine) -> None:
    tenant, model_id = make_tenant(pg)
    with ThreadPoolExecutor(1) as pool, session_scope(pg) as first:
        mine, created = jobs.create_job(
            first, tenant.id, SPEC, model_id=model_id, idempotency_key="same"
        )
        assert created

        def second() -> tuple[jobs.Job, bool]:
            with session_scope(pg) as s:
                return jobs.create_job(
                    s, tenant.id, SPEC, model_id=model_id, idempotency_key="same"
                )

        pending = pool.submit(second)
        _wait_until_blocked(pg)  # its INSERT waits on the unique index entry
        first.commit()
        theirs, created_again = pending.result(timeout=30)
    assert not created_again and theirs.id == mine.id
    with session_scope(pg) as s:
        assert len(jobs.list_jobs(s, tenant.id)[0]) == 1
