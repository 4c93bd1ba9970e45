"""kill -9 the worker holding a job in each stage: the job finishes on another worker with
the checkpoint an uninterrupted run with the same seed writes, byte for byte (same sha256),
and its attempts count shows the second run.

Two workers are up at all times (a replacement is started after each kill). Nothing sends
the job again by hand: the sweep timer sees the dead worker's heartbeat go stale, re-queues
the job and sends it; the live worker claims it and resumes from the last saved stage.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import URL

from slimline.pipeline.stages import STAGES
from tests.faults.conftest import (
    Cluster,
    PrivateRedis,
    checkpoint_sha,
    cluster,
    load,
    row,
    status_events,
    wait_final,
)
from tests.worker.conftest import events, job_spec_json, submit, upload_weights, wait_for

pytestmark = pytest.mark.slow
KILLED_STAGES = ("inspect", "plan", "fine-tune", "export")
STEPS = 50  # fine-tuning steps: enough to be caught fine-tuning, few enough to be quick


@pytest.fixture(scope="module")
def kc(
    pg_admin: URL,
    private_redis: PrivateRedis,
    tmp_path_factory: pytest.TempPathFactory,
    data_root: Path,
    cache_dir: Path,
) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("kill")
    with cluster(pg_admin, private_redis, root, data_root, cache_dir) as c:
        yield c


@pytest.fixture(scope="module")
def upload(kc: Cluster, digits_weights: Path) -> tuple[str, str]:
    return upload_weights(kc.engine, kc.settings, digits_weights)


@pytest.fixture(scope="module")
def reference(kc: Cluster, upload: tuple[str, str]) -> str:
    """The checkpoint sha256 of the job run uninterrupted."""
    job_id = submit(kc.app, kc.engine, *upload, job_spec_json(STEPS))
    wait_final(kc.engine, [job_id], 120, kc.logs)
    job = load(kc.engine, job_id)
    assert job.status == "succeeded" and job.attempts == 1, job.error
    return checkpoint_sha(kc.engine, job)


@pytest.mark.parametrize("stage", KILLED_STAGES)
def test_kill9_in_stage_resumes_on_another_worker_with_the_same_result(
    kc: Cluster, upload: tuple[str, str], reference: str, stage: str
) -> None:
    job_id = submit(kc.app, kc.engine, *upload, job_spec_json(STEPS))

    def in_stage() -> tuple[str, str | None, str | None, int] | None:
        r = row(kc.engine, job_id)
        assert r[0] in ("queued", "running"), r
        return r if r[0] == "running" and r[1] == stage else None

    _, _, holder, _ = wait_for(f"the job to run {stage}", in_stage, 90, every_s=0.005)
    victim = [w for w in kc.live() if w.proc.pid == int(str(holder).rsplit(":", 1)[1])][0]
    victim.kill9()
    at_kill = row(kc.engine, job_id)
    replacement = kc.start_worker(wait=False)  # keep two workers up

    wait_final(kc.engine, [job_id], 120, kc.logs)
    job = load(kc.engine, job_id)
    assert job.status == "succeeded", (at_kill, job.error)
    assert job.attempts == 2, (at_kill, job.attempts)
    assert job.worker is not None and not job.worker.endswith(f":{victim.proc.pid}")
    assert status_events(kc.engine, job_id) == [
        "queued", "running", "queued", "running", "succeeded",
    ]  # fmt: skip
    assert checkpoint_sha(kc.engine, job) == reference
    assert job.metrics is not None and job.metrics["verified"] is True
    # The worker died in ``stage``: the second attempt found only the stages before it saved.
    resumed = [e.data["finished"] for e in events(kc.engine, job_id)
               if e.data and e.data.get("event") == "resumed"]  # fmt: skip
    before = list(STAGES[: STAGES.index(stage)])
    assert resumed == ([before] if before else []), (resumed, job.metrics["timings"])
    kc.wait_ready(replacement)
