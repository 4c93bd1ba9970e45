"""Redis restarted (empty: no persistence, as after a crash) with jobs queued and running:
every job still finishes, once. The running jobs go on (their workers reconnect); the queued
jobs' messages are gone with the broker, and the sweeper re-sends them once they have waited
``requeue_after_s`` since their last send."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from tests.faults.conftest import PrivateRedis, cluster, load, row, status_events, wait_final
from tests.worker.conftest import job_spec_json, submit, upload_weights, wait_for

pytestmark = pytest.mark.slow


def test_redis_restart_with_jobs_queued_and_running(
    pg_admin: URL,
    private_redis: PrivateRedis,
    tmp_path: Path,
    data_root: Path,
    cache_dir: Path,
    digits_weights: Path,
) -> None:
    with cluster(pg_admin, private_redis, tmp_path, data_root, cache_dir, workers=1) as c:
        upload = upload_weights(c.engine, c.settings, digits_weights)
        ids = [submit(c.app, c.engine, *upload, job_spec_json(40)) for _ in range(3)]

        def one_running_two_queued() -> bool:
            statuses = sorted(row(c.engine, j)[0] for j in ids)
            assert "succeeded" not in statuses, statuses  # the jobs must outlast the setup
            return statuses == ["queued", "queued", "running"]

        wait_for("a job running and two queued", one_running_two_queued, 90, every_s=0.02)
        queued = [j for j in ids if row(c.engine, j)[0] == "queued"]
        private_redis.restart()
        restarted = datetime.now(UTC)
        assert private_redis.proc is not None

        wait_final(c.engine, ids, 150, c.logs)
        for job_id in ids:
            job = load(c.engine, job_id)
            assert job.status == "succeeded", (job_id, job.error)
            assert status_events(c.engine, job_id).count("succeeded") == 1
            assert job.metrics is not None and job.metrics["verified"] is True
        for job_id in queued:  # lost with the broker: the sweeper sent it again
            job = load(c.engine, job_id)
            assert job.enqueued_at is not None and job.enqueued_at > restarted
