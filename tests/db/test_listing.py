"""Listing (keyset pages, status filter), events paging, and tenant isolation of every read and
of cancel."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from slimline import jobs
from slimline.db.session import session_scope
from slimline.errors import NotFound
from tests.db.conftest import SPEC, T0, make_tenant


def test_pagination_sees_every_job_once_in_a_stable_order(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    other, other_model = make_tenant(engine)
    with session_scope(engine) as s:
        ids = []
        for i in range(120):
            # Groups of 3 share a timestamp, so the id tie-break is exercised.
            job, _ = jobs.create_job(
                s, tenant.id, {**SPEC, "i": i}, model_id=model_id, now=T0 + timedelta(i // 3)
            )
            ids.append(job.id)
        for i in range(5):
            jobs.create_job(s, other.id, SPEC, model_id=other_model, now=T0 + timedelta(i))
        for job_id in ids[:30]:
            jobs.claim_job(s, job_id, "w", now=T0)
        for job_id in ids[:10]:
            jobs.finish_job(s, job_id, "w", {}, None, now=T0)

    def all_pages(status: str | list[str] | None = None) -> tuple[list[str], list[int]]:
        seen: list[str] = []
        sizes: list[int] = []
        cursor = None
        while True:
            with session_scope(engine) as s:
                page, cursor = jobs.list_jobs(s, tenant.id, status=status, limit=50, cursor=cursor)
            seen += [j.id for j in page]
            sizes.append(len(page))
            if cursor is None:
                return seen, sizes

    seen, sizes = all_pages()
    assert sizes == [50, 50, 20]
    assert sorted(seen) == sorted(ids) and len(set(seen)) == 120
    expected = [j for _, j in sorted(((i // 3, j) for i, j in enumerate(ids)), reverse=True)]
    assert seen == expected  # newest first, ties by id descending
    assert all_pages()[0] == seen  # stable
    assert set(all_pages("running")[0]) == set(ids[10:30])
    assert set(all_pages("queued")[0]) == set(ids[30:])
    assert set(all_pages(["succeeded", "running"])[0]) == set(ids[:30])
    with session_scope(engine) as s:
        page, cursor = jobs.list_jobs(s, tenant.id, status="succeeded", limit=10)
        assert len(page) == 10 and cursor is None  # an exactly full last page has no next
        assert jobs.count_jobs_since(s, tenant.id, T0 + timedelta(38)) == 6


def test_jobs_created_while_paging_do_not_shift_pages(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    with session_scope(engine) as s:
        for i in range(6):
            jobs.create_job(s, tenant.id, SPEC, model_id=model_id, now=T0 + timedelta(i))
        first, cursor = jobs.list_jobs(s, tenant.id, limit=3)
        jobs.create_job(s, tenant.id, SPEC, model_id=model_id, now=T0 + timedelta(10))
        second, end = jobs.list_jobs(s, tenant.id, limit=3, cursor=cursor)
    assert end is None
    assert [j.created_at for j in first + second] == [T0 + timedelta(i) for i in range(5, -1, -1)]


def test_events_page_after_the_last_id(engine: Engine) -> None:
    tenant, model_id = make_tenant(engine)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, tenant.id, SPEC, model_id=model_id)
        for i in range(7):
            jobs.add_event(s, job.id, "epoch", data={"epoch": i})
    with session_scope(engine) as s:
        first = jobs.job_events(s, tenant.id, job.id, limit=4)
        rest = jobs.job_events(s, tenant.id, job.id, after_id=first[-1].id, limit=100)
    assert [e.kind for e in first] == ["status", "epoch", "epoch", "epoch"]
    assert [e.data["epoch"] for e in rest if e.data] == [3, 4, 5, 6]


def test_another_tenants_job_is_not_found_everywhere(engine: Engine) -> None:
    alice, alice_model = make_tenant(engine)
    bob, _ = make_tenant(engine)
    with session_scope(engine) as s:
        job, _ = jobs.create_job(s, alice.id, SPEC, model_id=alice_model)
    for call in (
        lambda s: jobs.get_job(s, bob.id, job.id),
        lambda s: jobs.job_events(s, bob.id, job.id),
        lambda s: jobs.request_cancel(s, bob.id, job.id),
    ):
        with pytest.raises(NotFound) as info, session_scope(engine) as s:
            call(s)
        assert info.value.message == f"job {job.id!r} not found"  # same as a missing job
    with pytest.raises(NotFound) as missing, session_scope(engine) as s:
        jobs.get_job(s, bob.id, "00000000-0000-0000-0000-000000000000")
    assert missing.value.code == "not_found"
    with session_scope(engine) as s:
        assert jobs.list_jobs(s, bob.id) == ([], None)
        assert jobs.get_job(s, alice.id, job.id).status == "queued"  # bob's cancel did nothing
